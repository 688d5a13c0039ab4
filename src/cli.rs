//! Command-line interface. Every flag has an environment variable of the same meaning.

use clap::Parser;

/// The command line of the `aliyun-acr-credential-helper` binary.
#[derive(Debug, Parser)]
#[command(
    name = "aliyun-acr-credential-helper",
    version,
    about = "Keeps Alibaba Cloud Container Registry pull Secrets fresh and attached to ServiceAccounts"
)]
pub struct Args {}

#[cfg(test)]
mod tests {
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
}
