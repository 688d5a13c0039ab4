//! Label selectors in Kubernetes' string syntax (as `kubectl get -l` takes them): comma-separated
//! requirements, all of which must hold:
//!
//! | requirement | holds when the label |
//! |---|---|
//! | `key=value`, `key==value` | exists with that value |
//! | `key!=value` | is absent or has another value |
//! | `key in (a,b)` | exists with one of the values |
//! | `key notin (a,b)` | is absent or has none of the values |
//! | `key` | exists |
//! | `!key` | is absent |
//!
//! Pure; parsing errors name the requirement and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector; the empty selector selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Whether labels given by `get` (a label's value, if present) satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits at the commas that separate requirements (not those inside `( )`).
fn requirements(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("a `)` without its `(`".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a `(` without its `)`".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters
/// of alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(super::validate::is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

/// A label value: empty, or at most 63 characters of alphanumerics, `-`, `_` and `.`, starting and
/// ending alphanumeric.
pub fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn key(k: &str, req: &str) -> Result<String, String> {
    let k = k.trim();
    if is_label_key(k) {
        Ok(k.to_owned())
    } else {
        Err(format!(
            "in {req:?}: {k:?} is not a label key (an optional DNS subdomain and `/`, then up to 63 of a-z, 0-9, `-`, `_`, `.`)"
        ))
    }
}

fn value(v: &str, req: &str) -> Result<String, String> {
    let v = v.trim();
    if is_label_value(v) {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "in {req:?}: {v:?} is not a label value (up to 63 of a-z, 0-9, `-`, `_`, `.`)"
        ))
    }
}

/// Parses one requirement.
fn requirement(req: &str) -> Result<Requirement, String> {
    let r = req.trim();
    if let Some(k) = r.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k, req)?));
    }
    if let Some((k, v)) = r.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k, req)?, value(v, req)?));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Ok(Requirement::Equals(key(k, req)?, value(v, req)?));
    }
    // `key in (..)` / `key notin (..)`: the key, a space, the operator, the set.
    if let Some(open) = r.find('(') {
        let head = r[..open].trim_end();
        let (k, op) = head.rsplit_once(char::is_whitespace).ok_or_else(|| {
            format!("in {req:?}: expected `key in (values)` or `key notin (values)`")
        })?;
        let body = r[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("in {req:?}: nothing may follow the `)`"))?;
        let values = body
            .split(',')
            .map(|v| value(v, req))
            .collect::<Result<BTreeSet<String>, String>>()?;
        let k = key(k, req)?;
        return match op {
            "in" => Ok(Requirement::In(k, values)),
            "notin" => Ok(Requirement::NotIn(k, values)),
            other => Err(format!(
                "in {req:?}: unknown operator {other:?} (expected in or notin)"
            )),
        };
    }
    Ok(Requirement::Exists(key(r, req)?))
}

/// Parses a selector; an empty string is an error (say nothing rather than an empty selector).
pub fn parse(s: &str) -> Result<LabelSelector, String> {
    if s.trim().is_empty() {
        return Err("an empty selector".into());
    }
    let reqs = requirements(s)?
        .into_iter()
        .map(|r| {
            if r.trim().is_empty() {
                Err("an empty requirement (two commas in a row, or a trailing comma)".to_owned())
            } else {
                requirement(r)
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LabelSelector(reqs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_operator_matches_as_kubernetes_defines_it() {
        let team_a = labels(&[("team", "a"), ("env", "prod")]);
        let team_b = labels(&[("team", "b")]);
        let none = labels(&[]);
        let cases: [(&str, [bool; 3]); 9] = [
            ("team=a", [true, false, false]),
            ("team==a", [true, false, false]),
            ("team!=a", [false, true, true]),
            ("team in (a, c)", [true, false, false]),
            ("team notin (a,c)", [false, true, true]),
            ("team", [true, true, false]),
            ("!team", [false, false, true]),
            ("team,env=prod", [true, false, false]),
            ("example.com/team in (a),!legacy", [false, false, false]),
        ];
        for (s, want) in cases {
            let got = [&team_a, &team_b, &none].map(|l| sel(s).matches(l));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn it_prints_back_to_what_it_parses() {
        for s in [
            "team=a",
            "team!=a",
            "team in (a,c)",
            "team notin (a)",
            "x/y",
            "!k",
        ] {
            assert_eq!(sel(&sel(s).to_string()), sel(s), "{s}");
        }
    }

    #[test]
    fn malformed_selectors_are_rejected_with_the_reason() {
        for (s, says) in [
            ("", "empty selector"),
            ("team=a,,env=b", "empty requirement"),
            ("team=a,", "empty requirement"),
            ("team in (a", "without its `)`"),
            ("team in a)", "without its `(`"),
            ("team within (a)", "unknown operator"),
            ("in (a)", "expected `key in"),
            ("team in (a) x", "nothing may follow"),
            ("Team Name=a", "not a label key"),
            ("team=a b", "not a label value"),
            ("-team", "not a label key"),
            ("team in (a,-b)", "not a label value"),
        ] {
            let e = parse(s).err().unwrap_or_else(|| panic!("{s:?} parsed"));
            assert!(e.contains(says), "{s:?}: {e}");
        }
    }
}
