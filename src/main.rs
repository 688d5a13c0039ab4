#![forbid(unsafe_code)]

use acr_helper::cli::Args;
use clap::Parser;

#[tokio::main]
async fn main() {
    // Process-wide set-up, once, before anything else: the one rustls crypto provider of every
    // TLS client and server, and logging.
    acr_helper::aliyun::http::install_crypto_provider();
    let args = Args::parse();
    if let Err(e) = acr_helper::telemetry::init(&args.log) {
        eprintln!("aliyun-acr-credential-helper: {e}");
        std::process::exit(2);
    }
    let code = match acr_helper::app::main(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aliyun-acr-credential-helper: {e}");
            1
        }
    };
    std::process::exit(code);
}
