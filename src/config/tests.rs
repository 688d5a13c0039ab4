use super::*;
use crate::credentials::{AssumedRole, RrsaRole};

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(pairs: &[(&str, &str)]) -> Parsed {
    parse(&data(pairs), Some("cn-hangzhou")).unwrap_or_else(|e| panic!("{e}"))
}

fn err(pairs: &[(&str, &str)]) -> String {
    match parse(&data(pairs), Some("cn-hangzhou")) {
        Ok(p) => panic!("accepted: {:?}", p.config),
        Err(e) => e.to_string(),
    }
}

fn names(list: &[&str]) -> Selection {
    Selection::Names(list.iter().map(|s| (*s).to_owned()).collect())
}

#[test]
fn an_empty_config_means_the_defaults() {
    let p = ok(&[]);
    assert_eq!(p.config.namespaces, names(&["default"]));
    assert_eq!(p.config.service_accounts, names(&["default"]));
    assert_eq!(p.config.expiring_threshold, Duration::from_secs(900));
    assert_eq!(
        p.config.instances,
        vec![Instance {
            scope: Scope::default(),
            edition: Edition::Personal,
            region: "cn-hangzhou".into(),
            domains: vec![],
            auth: InstanceAuth::default(),
        }]
    );
    assert!(!p.config.rrsa_enabled);
    assert_eq!(p.config.webhook, WebhookConfig::default());
    assert!(p.warnings.is_empty());
}

#[test]
fn selections_trim_and_compare_keywords_case_insensitively() {
    let p = ok(&[("watch-namespace", " ALL "), ("service-account", "*")]);
    assert_eq!(p.config.namespaces, Selection::All);
    assert_eq!(p.config.service_accounts, Selection::All);
    let p = ok(&[
        ("watch-namespace", "team-a, Default ,team-b,"),
        ("service-account", "Default, builder"),
    ]);
    assert_eq!(p.config.namespaces, names(&["default", "team-a", "team-b"]));
    assert_eq!(p.config.service_accounts, names(&["builder", "default"]));
    assert!(p.config.namespaces.contains("team-a"));
    assert!(!p.config.namespaces.contains("team-c"));
}

#[test]
fn the_documented_examples_parse() {
    // The seed documents' cross-account example.
    let p = ok(&[
        ("service-account", "default"),
        ("watch-namespace", "all"),
        ("expiring-threshold", "15m"),
        ("notify-email", "c*@example.com"),
        (
            "acr-registry-info",
            r#"- instanceId: "cri-xxx"
  regionId: "cn-hangzhou"
  domains: "xxxxx-registry.cn-hangzhou.cr.aliyuncs.com"
  rrsaRoleARN: "acs:ram::1280000000009011:role/rrsa-a"
  rrsaOIDCProviderRoleARN: "acs:ram::1280000000009011:oidc-provider/ack-rrsa-c8864"
  assumeRoleARN: "acs:ram::1000000000009630:role/puller"
  expireDuration: 3600
"#,
        ),
        ("rrsa", "enable: true\n"),
    ]);
    let inst = &p.config.instances[0];
    assert_eq!(
        inst.edition,
        Edition::Enterprise {
            instance_id: "cri-xxx".into()
        }
    );
    assert_eq!(
        inst.domains,
        vec!["xxxxx-registry.cn-hangzhou.cr.aliyuncs.com"]
    );
    assert_eq!(
        inst.auth.rrsa,
        Some(RrsaRole {
            role_arn: "acs:ram::1280000000009011:role/rrsa-a".into(),
            oidc_provider_arn: "acs:ram::1280000000009011:oidc-provider/ack-rrsa-c8864".into(),
        })
    );
    assert_eq!(
        inst.auth.assume_role,
        Some(AssumedRole {
            role_arn: "acs:ram::1000000000009630:role/puller".into(),
            duration_seconds: 3600
        })
    );
    assert_eq!(
        p.config.legacy.get("notify-email").map(String::as_str),
        Some("c*@example.com")
    );

    // The AccessKey example: Personal Edition in a given region.
    let p = ok(&[(
        "acr-registry-info",
        "- instanceId: \"\"\n  regionId: \"cn-beijing\"\n  customAccessKey: \"LTAI5tKey\"\n  customAccessKeySecret: \"s3cret\"\n",
    )]);
    let inst = &p.config.instances[0];
    assert_eq!(inst.edition, Edition::Personal);
    assert_eq!(inst.region, "cn-beijing");
    assert_eq!(
        inst.auth.custom_access_key.as_ref().map(|k| k.id.as_str()),
        Some("LTAI5tKey")
    );
}

#[test]
fn domains_as_a_list_and_expire_duration_as_a_string() {
    let p = ok(&[(
        "acr-registry-info",
        "- instanceId: cri-abc123\n  domains:\n    - A.example.com\n    - b.example.com:5000\n  assumeRoleARN: acs:ram::1:role/r\n  expireDuration: \"7200\"\n",
    )]);
    let inst = &p.config.instances[0];
    assert_eq!(inst.domains, vec!["a.example.com", "b.example.com:5000"]);
    assert_eq!(
        inst.auth.assume_role.as_ref().map(|r| r.duration_seconds),
        Some(7200)
    );
    assert_eq!(inst.region, "cn-hangzhou", "the cluster region by default");
}

#[test]
fn several_instances_and_default_expire_duration() {
    let p = ok(&[(
        "acr-registry-info",
        "- instanceId: cri-one\n- instanceId: cri-two\n  regionId: ap-southeast-1\n  assumeRoleARN: acs:ram::1:role/x\n- regionId: us-west-1\n",
    )]);
    let labels: Vec<String> = p.config.instances.iter().map(Instance::label).collect();
    assert_eq!(labels, vec!["cri-one", "cri-two", "personal/us-west-1"]);
    assert_eq!(
        p.config.instances[1]
            .auth
            .assume_role
            .as_ref()
            .map(|r| r.duration_seconds),
        Some(3600)
    );
}

#[test]
fn unknown_keys_and_fields_are_warnings() {
    let p = ok(&[
        ("colour", "blue"),
        (
            "acr-registry-info",
            "- instanceId: cri-abc\n  flavour: vanilla\n",
        ),
        ("webhook-configuration", "enable: true\nextra: 1\n"),
        ("rrsa", "enable: false\nmode: x\n"),
        ("acr-api-version", "2018-12-01"),
    ]);
    assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("colour")));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("acr-registry-info[0]") && w.contains("flavour"))
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("rrsa: unknown field \"mode\""))
    );
    assert!(!p.warnings.iter().any(|w| w.contains("\"enable\"")));
}

#[test]
fn rrsa_arns_without_rrsa_enabled_are_a_warning_not_used() {
    let p = ok(&[(
        "acr-registry-info",
        "- instanceId: cri-abc\n  rrsaRoleARN: acs:ram::1:role/a\n  rrsaOIDCProviderRoleARN: acs:ram::1:oidc-provider/p\n",
    )]);
    assert_eq!(p.config.instances[0].auth.rrsa, None);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn webhook_configuration() {
    let p = ok(&[(
        "webhook-configuration",
        "enable: true\nfailure-policy: fail\ntimeout-seconds: 5\n",
    )]);
    assert_eq!(
        p.config.webhook,
        WebhookConfig {
            enable: true,
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 5,
            pod_injection: false,
            pod_failure_policy: FailurePolicy::Ignore,
            pod_timeout_seconds: 3,
        }
    );
    let p = ok(&[(
        "webhook-configuration",
        "pod-injection: true\npod-failure-policy: Fail\npod-timeout-seconds: 2\n",
    )]);
    let w = &p.config.webhook;
    assert!(!w.enable && w.pod_injection && w.any());
    assert_eq!(
        (w.pod_failure_policy, w.pod_timeout_seconds),
        (FailurePolicy::Fail, 2)
    );
    for (text, field) in [
        ("pod-injection: maybe", "pod-injection"),
        ("pod-failure-policy: Retry", "pod-failure-policy"),
        ("pod-timeout-seconds: 31", "pod-timeout-seconds"),
    ] {
        let e = err(&[("webhook-configuration", text)]);
        assert!(e.contains(&format!("webhook-configuration.{field}")), "{e}");
    }
    assert!(ok(&[]).config.patch_service_accounts);
    assert!(
        !ok(&[("patch-service-accounts", "False")])
            .config
            .patch_service_accounts
    );
    assert!(
        ok(&[("patch-service-accounts", "TRUE")])
            .config
            .patch_service_accounts
    );
    let e = err(&[("patch-service-accounts", "no")]);
    assert!(e.contains("patch-service-accounts: true or false"), "{e}");
}

/// Each malformed configuration, and the words its message must contain.
const MALFORMED: &[(&str, &str, &[&str])] = &[
    (
        "expiring-threshold",
        "15",
        &["expiring-threshold", "duration", "\"15\""],
    ),
    (
        "expiring-threshold",
        "fifteen minutes",
        &["expiring-threshold", "duration"],
    ),
    (
        "expiring-threshold",
        "0s",
        &["expiring-threshold", "positive"],
    ),
    (
        "expiring-threshold",
        "-5m",
        &["expiring-threshold", "duration"],
    ),
    (
        "watch-namespace",
        "team_a",
        &["watch-namespace[0]", "namespace name", "team_a"],
    ),
    (
        "watch-namespace",
        "ok, Bad.Name",
        &["watch-namespace[1]", "Bad.Name"],
    ),
    (
        "watch-namespace",
        " , ,",
        &["watch-namespace", "empty list"],
    ),
    (
        "service-account",
        "UPPER",
        &["service-account[0]", "ServiceAccount name"],
    ),
    (
        "acr-registry-info",
        "- instanceId: [unclosed",
        &["acr-registry-info", "YAML"],
    ),
    (
        "acr-registry-info",
        "[]",
        &[
            "acr-registry-info",
            "at least one instance",
            "remove the key",
        ],
    ),
    (
        "acr-registry-info",
        "# - instanceId: cri-abc\n#   regionId: cn-hangzhou\n",
        &["acr-registry-info", "commented out", "Personal Edition"],
    ),
    (
        "acr-registry-info",
        "instanceId: cri-abc",
        &["acr-registry-info", "single mapping"],
    ),
    (
        "acr-registry-info",
        "just a string",
        &["acr-registry-info", "list"],
    ),
    (
        "acr-registry-info",
        "- 42",
        &["acr-registry-info[0]", "mapping"],
    ),
    (
        "acr-registry-info",
        "- instanceId: i-abc",
        &["acr-registry-info[0].instanceId", "cri-"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  regionId: Hangzhou",
        &["acr-registry-info[0].regionId", "region id"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n- instanceId: cri-b\n  regionId: cn_beijing",
        &["acr-registry-info[1].regionId"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  domains: {a: b}",
        &["acr-registry-info[0].domains"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  domains: \"ok.example.com, not a host\"",
        &["acr-registry-info[0].domains", "not a host"],
    ),
    (
        "acr-registry-info",
        "- customAccessKey: LTAI5tKey",
        &[
            "acr-registry-info[0].customAccessKeySecret",
            "both or neither",
        ],
    ),
    (
        "acr-registry-info",
        "- customAccessKeySecret: hunter2",
        &["acr-registry-info[0].customAccessKey", "both or neither"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  assumeRoleARN: arn:aws:iam::1:role/x",
        &["acr-registry-info[0].assumeRoleARN", "role ARN"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  assumeRoleARN: acs:ram::1:role/x\n  expireDuration: 60",
        &["acr-registry-info[0].expireDuration", "900 to 43200"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  assumeRoleARN: acs:ram::1:role/x\n  expireDuration: one hour",
        &["acr-registry-info[0].expireDuration"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  rrsaRoleARN: acs:ram::1:role/x",
        &[
            "acr-registry-info[0].rrsaOIDCProviderRoleARN",
            "both or neither",
        ],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  rrsaRoleARN: acs:ram::1:role/x\n  rrsaOIDCProviderRoleARN: acs:ram::1:role/y",
        &[
            "acr-registry-info[0].rrsaOIDCProviderRoleARN",
            "oidc-provider",
        ],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  rrsaRoleARN: acs:ram::1:oidc-provider/p\n  rrsaOIDCProviderRoleARN: acs:ram::1:oidc-provider/p",
        &["acr-registry-info[0].rrsaRoleARN", "a role ARN"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n- instanceId: cri-a",
        &["acr-registry-info[1]", "twice"],
    ),
    (
        "acr-registry-info",
        "- instanceId: cri-a\n  assumeRoleARN: acs:ram::abc:role/x",
        &["acr-registry-info[0].assumeRoleARN"],
    ),
    ("rrsa", "enable: maybe", &["rrsa.enable", "true or false"]),
    ("rrsa", "[1, 2]", &["rrsa", "YAML"]),
    (
        "webhook-configuration",
        "enable: true\nfailure-policy: Sometimes",
        &["webhook-configuration.failure-policy", "Ignore or Fail"],
    ),
    (
        "webhook-configuration",
        "enable: true\ntimeout-seconds: 31",
        &["webhook-configuration.timeout-seconds", "1 to 30"],
    ),
    (
        "webhook-configuration",
        "enable: yes please",
        &["webhook-configuration.enable"],
    ),
    (
        "webhook-configuration",
        "{{{",
        &["webhook-configuration", "YAML"],
    ),
];

#[test]
fn malformed_configurations_are_rejected_with_messages_naming_the_key_item_and_expectation() {
    assert!(MALFORMED.len() >= 20);
    for (key, value, words) in MALFORMED {
        let message = err(&[(key, value)]);
        for w in *words {
            assert!(
                message.contains(w),
                "{key}={value:?}: {message:?} lacks {w:?}"
            );
        }
    }
}

#[test]
fn secrets_are_never_quoted_in_messages() {
    let message = err(&[(
        "acr-registry-info",
        "- customAccessKey: \"bad key with spaces\"\n  customAccessKeySecret: \"hunter2-secret\"\n",
    )]);
    assert!(message.contains("customAccessKey"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let message = err(&[(
        "acr-registry-info",
        "- customAccessKeySecret: hunter2-secret\n",
    )]);
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = parse(
        &data(&[
            ("expiring-threshold", "x"),
            ("watch-namespace", "Bad"),
            ("rrsa", "enable: 3"),
        ]),
        Some("cn-hangzhou"),
    )
    .err()
    .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn without_a_cluster_region_instances_need_their_own() {
    let e = parse(&data(&[]), None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("acr-registry-info") && e.contains("--region"),
        "{e}"
    );
    let e = parse(
        &data(&[("acr-registry-info", "- instanceId: cri-a\n")]),
        None,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("acr-registry-info[0].regionId"), "{e}");
    let p = parse(
        &data(&[(
            "acr-registry-info",
            "- instanceId: cri-a\n  regionId: cn-beijing\n",
        )]),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.config.instances[0].region, "cn-beijing");
}

#[test]
fn manifests_and_bare_maps_give_their_data() {
    let m = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: acr-configuration\ndata:\n  watch-namespace: all\n  expiring-threshold: 15m\n";
    let d = manifest_data(m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.get("watch-namespace").map(String::as_str), Some("all"));
    let d = manifest_data("service-account: \"*\"\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.get("service-account").map(String::as_str), Some("*"));
    // Unquoted booleans and numbers are the strings they were written as.
    let d = manifest_data("namespace-opt-in: false\nexpiring-threshold: 900\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.get("namespace-opt-in").map(String::as_str), Some("false"));
    assert_eq!(d.get("expiring-threshold").map(String::as_str), Some("900"));
    // A manifest without its kind: what is under `data`.
    let d = manifest_data("data:\n  watch-namespace: all\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.get("watch-namespace").map(String::as_str), Some("all"));
    assert_eq!(
        manifest_data("kind: Secret\ndata: {}\n"),
        Err("kind \"Secret\" is not a ConfigMap".to_owned())
    );
    assert!(manifest_data("data:\n  acr-registry-info:\n    - a\n").is_err());
    assert!(manifest_data("[1, 2]").is_err());
}

/// The README's selection table, row by row: (watch-namespace, namespace-selector,
/// exclude-namespaces) as given (`None`: key absent), then namespaces (name, labels) and whether
/// each is selected.
#[test]
fn the_namespace_selection_table() {
    type Row<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a [(&'a str, &'a [(&'a str, &'a str)], bool)],
    );
    let opt_in: &[(&str, &str)] = &[(OPT_LABEL, "true")];
    let opt_out: &[(&str, &str)] = &[(OPT_LABEL, "false")];
    let team_a: &[(&str, &str)] = &[("team", "a")];
    let team_a_out: &[(&str, &str)] = &[("team", "a"), (OPT_LABEL, "false")];
    let odd: &[(&str, &str)] = &[(OPT_LABEL, "yes")];
    let rows: &[Row<'_>] = &[
        // 1. The original keys alone keep their meaning: `default` by default.
        (
            None,
            None,
            None,
            &[("default", &[], true), ("team-a", team_a, false)],
        ),
        // 2. `all`.
        (
            Some("all"),
            None,
            None,
            &[("default", &[], true), ("x", team_a, true)],
        ),
        // 3. A list of names.
        (
            Some("a,b"),
            None,
            None,
            &[("a", &[], true), ("c", team_a, false)],
        ),
        // 4. A selector alone: only what it matches (not `default`).
        (
            None,
            Some("team=a"),
            None,
            &[("x", team_a, true), ("default", &[], false)],
        ),
        // 5. Names and a selector: either.
        (
            Some("b"),
            Some("team=a"),
            None,
            &[("b", &[], true), ("x", team_a, true), ("c", &[], false)],
        ),
        // 6. Exclusions win over `all`, names and the selector...
        (
            Some("all"),
            None,
            Some("kube-system, kube-public"),
            &[("kube-system", &[], false), ("x", &[], true)],
        ),
        (
            Some("x"),
            Some("team=a"),
            Some("x,y"),
            &[("x", &[], false), ("y", team_a, false)],
        ),
        // 7. ...and over a namespace's opt-in.
        (Some("all"), None, Some("x"), &[("x", opt_in, false)]),
        // 8. A namespace's opt-out wins over `all`, its name and the selector.
        (
            Some("all"),
            Some("team=a"),
            None,
            &[("x", opt_out, false), ("y", team_a_out, false)],
        ),
        (Some("x"), None, None, &[("x", opt_out, false)]),
        // 9. A namespace's opt-in selects it though nothing else does.
        (Some("a"), None, None, &[("c", opt_in, true)]),
        (None, Some("team=a"), None, &[("c", opt_in, true)]),
        // 10. The name label every namespace carries can be selected on.
        (
            None,
            Some("kubernetes.io/metadata.name notin (kube-system)"),
            None,
            &[("kube-system", &[], false), ("x", &[], true)],
        ),
        // 11. Other values of the opt label are ignored.
        (
            Some("a"),
            None,
            None,
            &[("a", odd, true), ("b", odd, false)],
        ),
    ];
    for (i, (watch, selector, exclude, namespaces)) in rows.iter().enumerate() {
        let mut pairs = Vec::new();
        if let Some(w) = watch {
            pairs.push((KEY_WATCH_NAMESPACE, *w));
        }
        if let Some(s) = selector {
            pairs.push((KEY_NAMESPACE_SELECTOR, *s));
        }
        if let Some(e) = exclude {
            pairs.push((KEY_EXCLUDE_NAMESPACES, *e));
        }
        let cfg = ok(&pairs).config;
        for (name, labels, want) in namespaces.iter() {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(
                cfg.selects_namespace(name, &labels),
                *want,
                "row {}: {name} {labels:?} under {pairs:?}",
                i + 1
            );
        }
    }
}

#[test]
fn the_service_account_selection_table() {
    // (service-account, name, its opt label, selected)
    let rows = [
        (None, "default", None, true),
        (None, "builder", None, false),
        (Some("default,builder"), "builder", None, true),
        (Some("*"), "anything", None, true),
        (Some("default"), "builder", Some(true), true),
        (Some("default"), "default", Some(false), false),
        (Some("*"), "anything", Some(false), false),
    ];
    for (i, (key, name, opted, want)) in rows.into_iter().enumerate() {
        let pairs: Vec<(&str, &str)> = key.map(|k| (KEY_SERVICE_ACCOUNT, k)).into_iter().collect();
        let cfg = ok(&pairs).config;
        assert_eq!(
            cfg.selects_service_account(InstanceSet::first(1), Some(name), opted),
            want,
            "row {}: {name} {opted:?} under {key:?}",
            i + 1
        );
    }
    assert_eq!(opt(Some("true")), Some(true));
    assert_eq!(opt(Some("false")), Some(false));
    assert_eq!(opt(Some("True")), None, "label values are exact");
    assert_eq!(opt(None), None);
}

#[test]
fn selection_keys_beyond_the_original_are_validated() {
    let e = err(&[(KEY_NAMESPACE_SELECTOR, "team in (a")]);
    assert!(e.starts_with("namespace-selector: a label selector"), "{e}");
    let e = err(&[(KEY_EXCLUDE_NAMESPACES, "ok, Not_OK")]);
    assert!(
        e.contains("exclude-namespaces[1]") && e.contains("\"Not_OK\""),
        "{e}"
    );
    let p = ok(&[
        (KEY_WATCH_NAMESPACE, "all"),
        (KEY_NAMESPACE_SELECTOR, "team=a"),
    ]);
    assert!(
        p.warnings.iter().any(|w| w.contains("adds nothing")),
        "{:?}",
        p.warnings
    );
    let p = ok(&[
        (KEY_WATCH_NAMESPACE, "team-a"),
        (KEY_NAMESPACE_SELECTOR, "team=a"),
    ]);
    assert!(
        !p.warnings.iter().any(|w| w.contains("adds nothing")),
        "{:?}",
        p.warnings
    );
    // Neither key is "unknown".
    let p = ok(&[
        (KEY_NAMESPACE_SELECTOR, "team=a"),
        (KEY_EXCLUDE_NAMESPACES, "x"),
    ]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn instances_serve_the_namespaces_they_name_and_the_others_what_the_configmap_selects() {
    let registry_info = "\
- instanceId: cri-teama
  namespaces: team-a1, team-a2
- instanceId: cri-teamb
  namespaceSelector: team=b
  serviceAccounts: [builder]
- instanceId: cri-shared
";
    let cfg = ok(&[
        (KEY_WATCH_NAMESPACE, "shared,team-a1"),
        (KEY_REGISTRY_INFO, registry_info),
        (KEY_EXCLUDE_NAMESPACES, "team-a2"),
    ])
    .config;
    assert!(cfg.scoped());
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let of = |name: &str, l: &[(&str, &str)]| cfg.labels_of(cfg.instances_for(name, &labels(l)));
    // (namespace, labels, the instances whose logins it gets)
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let rows: [Row; 9] = [
        // Named by team A's instance and by watch-namespace: both.
        ("team-a1", &[], &["cri-teama", "cri-shared"]),
        // Excluded: nothing, whatever names it.
        ("team-a2", &[], &[]),
        // Team B's by label: only team B's login (the shared one needs watch-namespace).
        ("b-builds", &[("team", "b")], &["cri-teamb"]),
        ("shared", &[], &["cri-shared"]),
        ("other", &[], &[]),
        // A tenant's opt-in label brings in the unscoped instance only, never a team's.
        ("other", &[(OPT_LABEL, "true")], &["cri-shared"]),
        // Opted out: nothing, even what names it.
        ("team-a1", &[(OPT_LABEL, "false")], &[]),
        // The name label counts for a selector as in Kubernetes.
        ("team-b", &[(NAMESPACE_NAME_LABEL, "team-b")], &[]),
        (
            "b-ci",
            &[("team", "b"), (OPT_LABEL, "true")],
            &["cri-teamb", "cri-shared"],
        ),
    ];
    for (ns, l, want) in rows {
        assert_eq!(of(ns, l), want, "{ns} {l:?}");
        assert_eq!(
            cfg.selects_namespace(ns, &labels(l)),
            !want.is_empty(),
            "{ns}"
        );
    }
    // ServiceAccounts: the serving instances' own lists, else `service-account` (default).
    let b = cfg.instances_for("b-builds", &labels(&[("team", "b")]));
    assert!(cfg.selects_service_account(b, Some("builder"), None));
    assert!(!cfg.selects_service_account(b, Some("default"), None));
    assert!(cfg.selects_service_account(b, Some("default"), Some(true)));
    let a = cfg.instances_for("team-a1", &labels(&[]));
    assert!(cfg.selects_service_account(a, Some("default"), None));
    assert!(!cfg.selects_service_account(a, Some("builder"), None));
    assert!(!cfg.selects_service_account(InstanceSet::EMPTY, Some("default"), Some(true)));
    assert!(
        !cfg.selects_service_account(a, None, None),
        "a generateName'd one needs `*`"
    );
    let lines = cfg.describe_instances();
    assert_eq!(
        lines[0],
        "instance cri-teama: namespaces team-a1, team-a2; the ServiceAccounts `service-account` selects"
    );
    assert_eq!(
        lines[1],
        "instance cri-teamb: namespaces matching `team=b`; ServiceAccounts builder"
    );
    assert_eq!(
        lines[2],
        "instance cri-shared: every namespace the ConfigMap selects; the ServiceAccounts `service-account` selects"
    );
}

#[test]
fn without_scoping_fields_every_instance_serves_what_the_original_keys_select() {
    let cfg = ok(&[
        (KEY_WATCH_NAMESPACE, "a"),
        (
            KEY_REGISTRY_INFO,
            "- instanceId: cri-one\n- instanceId: cri-two\n",
        ),
    ])
    .config;
    assert!(!cfg.scoped());
    let none = BTreeMap::new();
    assert_eq!(
        cfg.labels_of(cfg.instances_for("a", &none)),
        ["cri-one", "cri-two"]
    );
    assert!(cfg.instances_for("b", &none).is_empty());
}

#[test]
fn the_namespace_opt_in_label_can_be_turned_off() {
    let labelled: BTreeMap<String, String> = [(OPT_LABEL.to_owned(), "true".to_owned())].into();
    let on = ok(&[(KEY_WATCH_NAMESPACE, "a")]).config;
    assert!(on.namespace_opt_in && on.selects_namespace("tenant", &labelled));
    let off = ok(&[(KEY_WATCH_NAMESPACE, "a"), (KEY_NAMESPACE_OPT_IN, "false")]).config;
    assert!(!off.selects_namespace("tenant", &labelled));
    assert!(off.selects_namespace("a", &BTreeMap::new()));
    // An opt-out still counts.
    let out: BTreeMap<String, String> = [(OPT_LABEL.to_owned(), "false".to_owned())].into();
    assert!(!off.selects_namespace("a", &out));
    assert!(
        off.describe_instances()
            .iter()
            .any(|l| l.contains("namespace-opt-in: false"))
    );
    assert_eq!(
        err(&[(KEY_NAMESPACE_OPT_IN, "sometimes")]),
        "namespace-opt-in: true or false, got \"sometimes\""
    );
}

#[test]
fn scoping_fields_are_checked() {
    let bad = |item: &str| err(&[(KEY_REGISTRY_INFO, item)]);
    assert_eq!(
        bad("- instanceId: cri-a\n  namespaces: Team_A\n"),
        "acr-registry-info[0].namespaces: namespace names; \"Team_A\" is not one"
    );
    assert_eq!(
        bad("- instanceId: cri-a\n  namespaces: \" , \"\n"),
        "acr-registry-info[0].namespaces: at least one namespace name (remove the field to serve every one)"
    );
    assert!(
        bad("- instanceId: cri-a\n  namespaceSelector: \"team in (a\"\n")
            .starts_with("acr-registry-info[0].namespaceSelector: a label selector")
    );
    assert_eq!(
        bad("- instanceId: cri-a\n  serviceAccounts: {a: b}\n"),
        "acr-registry-info[0].serviceAccounts: a comma-separated string or a YAML list of ServiceAccount names"
    );
    let many: String = (0..65)
        .map(|i| format!("- instanceId: cri-i{i}\n"))
        .collect();
    assert_eq!(
        bad(&many),
        "acr-registry-info: at most 64 instances, got 65"
    );
    let most: String = (0..MAX_INSTANCES)
        .map(|i| format!("- instanceId: cri-i{i}\n"))
        .collect();
    assert_eq!(
        ok(&[(KEY_REGISTRY_INFO, &most)]).config.instances.len(),
        MAX_INSTANCES
    );
    let star = ok(&[(
        KEY_REGISTRY_INFO,
        "- instanceId: cri-a\n  serviceAccounts: \"*\"\n",
    )])
    .config;
    assert_eq!(
        star.instances[0].scope.service_accounts,
        Some(Selection::All)
    );
    assert!(
        ok(&[(
            KEY_REGISTRY_INFO,
            "- instanceId: cri-a\n  namespaces: [x, y]\n"
        )])
        .warnings
        .is_empty()
    );
}

#[test]
fn a_webhook_is_registered_when_either_is_enabled() {
    for (enable, pod_injection) in [(false, false), (true, false), (false, true), (true, true)] {
        let w = WebhookConfig {
            enable,
            pod_injection,
            ..WebhookConfig::default()
        };
        assert_eq!(w.any(), enable || pod_injection, "{enable} {pod_injection}");
    }
}

#[test]
fn a_configuration_is_scoped_when_an_instance_names_namespaces_or_service_accounts() {
    let scoped = |item: &str| {
        ok(&[(
            "acr-registry-info",
            &format!("- instanceId: cri-a\n  {item}\n- instanceId: cri-b\n"),
        )])
        .config
        .scoped()
    };
    assert!(scoped("namespaces: [team-a]"));
    assert!(scoped("namespaceSelector: team=a"));
    assert!(scoped("serviceAccounts: [builder]"));
    assert!(!scoped("domains: [r.example.com]"));
    assert!(
        !scoped("namespaceSelector: \"  \""),
        "a blank selector is absent"
    );
    assert!(!ok(&[]).config.scoped());
}

#[test]
fn a_shown_value_is_quoted_and_cut_after_80_characters() {
    assert_eq!(parse::shown("team-a"), "\"team-a\"");
    let eighty = "é".repeat(80);
    assert_eq!(parse::shown(&eighty), format!("{eighty:?}"));
    assert_eq!(
        parse::shown(&format!("{eighty}x")),
        format!("{eighty:?}...")
    );
}

#[test]
fn yaml_scalars_are_read_as_written() {
    // A number where a string is expected reads as written (namespace 123 is a DNS label).
    let p = ok(&[(
        KEY_REGISTRY_INFO,
        "- instanceId: cri-a\n  namespaces: [123, team-a]\n",
    )]);
    assert_eq!(
        p.config.instances[0].scope.namespaces,
        Some(["123".to_owned(), "team-a".to_owned()].into())
    );
    // Quoted booleans, any case.
    assert!(
        ok(&[(KEY_RRSA, "enable: \" TRUE \"\n")])
            .config
            .rrsa_enabled
    );
    assert!(!ok(&[(KEY_RRSA, "enable: \"False\"\n")]).config.rrsa_enabled);
    // An empty document is an empty mapping: the defaults.
    assert_eq!(
        ok(&[(KEY_WEBHOOK, "~\n")]).config.webhook,
        WebhookConfig::default()
    );
    // Policies in any case.
    let w = ok(&[(
        KEY_WEBHOOK,
        "failure-policy: ignore\npod-failure-policy: FAIL\n",
    )])
    .config
    .webhook;
    assert_eq!(
        (w.failure_policy, w.pod_failure_policy),
        (FailurePolicy::Ignore, FailurePolicy::Fail)
    );
}

#[test]
fn registry_domains_are_host_names_with_a_dot_and_an_optional_port() {
    for (domain, valid) in [
        ("r.example.com", true),
        ("r.example.com:5000", true),
        ("r.example.com:65535", true),
        ("localhost", false),
        ("localhost:5000", false),
        ("bad_host.example.com", false),
        ("r.example.com:", false),
        ("r.example.com:123456", false),
        ("r.example.com:ab", false),
    ] {
        assert_eq!(validate::is_registry_domain(domain), valid, "{domain}");
    }
}

#[test]
fn arns_and_instance_ids_are_checked_character_by_character() {
    for (arn, valid) in [
        ("acs:ram::1280000000009011:role/rrsa-a", true),
        ("acs:ram::1:role/path/name_1.x@y", true),
        ("acs:ram::1:role/", false),
        ("acs:ram::1:role/a b", false),
        ("acs:ram::x1:role/a", false),
        ("acs:ram:::role/a", false),
        ("acs:ram::1:oidc-provider/a", false),
    ] {
        assert_eq!(validate::is_role_arn(arn), valid, "{arn}");
    }
    assert!(validate::is_oidc_provider_arn("acs:ram::1:oidc-provider/p"));
    for (id, valid) in [
        ("cri-abc123", true),
        ("cri-", false),
        ("cri-ABC", false),
        ("cri-a_b", false),
        ("abc123", false),
    ] {
        assert_eq!(validate::is_instance_id(id), valid, "{id}");
    }
}
