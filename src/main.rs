use acr_helper::cli::Args;
use clap::Parser;

fn main() {
    // One rustls crypto provider for every TLS client of the process, installed first.
    acr_helper::aliyun::http::install_crypto_provider();
    let _args = Args::parse();
}
