use acr_helper::cli::Args;
use clap::Parser;

#[tokio::main]
async fn main() {
    // One rustls crypto provider for every TLS client of the process, installed first.
    acr_helper::aliyun::http::install_crypto_provider();
    let args = Args::parse();
    let code = match acr_helper::app::main(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aliyun-acr-credential-helper: {e}");
            1
        }
    };
    std::process::exit(code);
}
