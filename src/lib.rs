//! aliyun-acr-credential-helper: keeps Alibaba Cloud Container Registry (ACR) pull Secrets fresh
//! in the namespaces an operator selects and attaches them to the selected ServiceAccounts, as the
//! ACK add-on of the same name does.
//!
//! The crate is one library and one binary; the binary is a thin shell around [`app::main`].

#![forbid(unsafe_code)]

pub mod aliyun;
pub mod app;
pub mod cli;
pub mod config;
pub mod config_source;
pub mod controller;
pub mod credentials;
pub mod duration;
pub mod fuzz;
pub mod index;
pub mod kube_errors;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod plan;
pub mod provider;
pub mod record;
pub mod render;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod timing;
pub mod watches;
pub mod webhook;
