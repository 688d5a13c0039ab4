use super::*;
use clap::CommandFactory;

#[test]
fn cli_definition_is_consistent() {
    Args::command().debug_assert();
}

#[test]
fn version_flag_prints_the_crate_version() {
    let err = Args::try_parse_from(["aliyun-acr-credential-helper", "--version"])
        .err()
        .map(|e| (e.kind(), e.to_string()));
    let (kind, text) = err.unwrap_or_else(|| panic!("--version must end parsing"));
    assert_eq!(kind, clap::error::ErrorKind::DisplayVersion);
    assert_eq!(
        text.trim(),
        format!("aliyun-acr-credential-helper {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_flag_has_an_environment_variable() {
    let cmd = Args::command();
    let args = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()));
    for arg in args.filter(|a| !a.is_positional()) {
        let id = arg.get_id().as_str();
        // plan's -o chooses an output format for one invocation: no variable.
        if matches!(id, "help" | "version" | "output") {
            continue;
        }
        assert!(
            arg.get_env().is_some(),
            "--{id} has no environment variable"
        );
    }
}

/// The README's flag tables are the operator's reference: every flag of every subcommand is
/// a row there, with its environment variable on the same line.
#[test]
fn every_flag_is_documented_in_the_readme() {
    let readme = include_str!("../../README.md");
    let cmd = Args::command();
    let mut commands = vec![&cmd];
    commands.extend(cmd.get_subcommands());
    for c in commands {
        for arg in c.get_arguments() {
            let (Some(long), false) = (arg.get_long(), arg.is_positional()) else {
                continue;
            };
            if matches!(long, "help" | "version") {
                continue;
            }
            if long == "output" {
                // plan's only flag without a variable, described in plan's section.
                assert!(readme.contains("`plan [FILE] [-o text|json]`"));
                continue;
            }
            let flag = format!("| `--{long}");
            let row = readme.lines().find(|l| {
                l.strip_prefix(&flag)
                    .is_some_and(|rest| rest.starts_with('`') || rest.starts_with(' '))
            });
            let row = row.unwrap_or_else(|| panic!("--{long} has no row in the README"));
            if let Some(env) = arg.get_env() {
                let env = format!("`{}`", env.to_string_lossy());
                assert!(row.contains(&env), "--{long}: the README row lacks {env}");
            }
        }
    }
}

#[test]
fn endpoint_overrides() {
    let args = Args::try_parse_from([
        "x",
        "--sts-endpoint",
        "http://127.0.0.1:8080",
        "--cr-endpoint",
        "http://127.0.0.1:8080/r/{region}",
        "--metadata-endpoint",
        "http://127.0.0.1:8080",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let e = args.cloud.endpoints().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.sts.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(e.cr_template, "http://127.0.0.1:8080/r/{region}");
    let defaults = Args::try_parse_from(["x"]).unwrap_or_else(|e| panic!("{e}"));
    let e = defaults.cloud.endpoints().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.sts.as_str(), "https://sts.aliyuncs.com/");
    assert_eq!(e.metadata.as_str(), "http://100.100.100.200/");
}

#[test]
fn bad_endpoints_are_named() {
    for (flag, value) in [
        ("--sts-endpoint", "sts.aliyuncs.com"),
        ("--cr-endpoint", "ftp://cr.{region}.example"),
        ("--metadata-endpoint", "http://"),
    ] {
        let args = Args::try_parse_from(["x", flag, value]).unwrap_or_else(|e| panic!("{e}"));
        let err = args
            .cloud
            .endpoints()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

#[test]
fn flags_are_accepted_after_the_subcommand_too() {
    for argv in [
        &["x", "run", "--region", "cn-shanghai", "--workers", "4"][..],
        &["x", "--region", "cn-shanghai", "run", "--workers", "4"],
    ] {
        let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(args.kube.region.as_deref(), Some("cn-shanghai"), "{argv:?}");
        assert_eq!(args.run.workers, 4);
        assert!(matches!(args.command, Some(Command::Run)));
    }
    let args = Args::try_parse_from(["x", "check-config", "cm.yaml", "--region", "cn-beijing"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(args.kube.region.as_deref(), Some("cn-beijing"));
    let args = Args::try_parse_from([
        "x",
        "cleanup",
        "--secret-name",
        "s",
        "--lease-duration",
        "4s",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(args.kube.secret_name, "s");
    assert_eq!(args.run.lease_duration, Duration::from_secs(4));
}
