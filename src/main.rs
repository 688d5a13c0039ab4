use acr_helper::cli::Args;
use clap::Parser;

fn main() {
    let _args = Args::parse();
}
