//! The `slidegate` binary: read settings, start logs and traces, run one replica until stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use slidegate::configuration::Settings;
use slidegate::startup::Application;
use slidegate::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: slidegate [--config PATH]

Runs one slidegate replica. Settings come from built-in defaults, then the TOML
file given by --config (or SLIDEGATE_CONFIG), then SLIDEGATE__SECTION__KEY
environment variables. See README.md, docs/configuration.md and config/default.toml.";

fn config_path() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut path = std::env::var_os("SLIDEGATE_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(value) => path = Some(PathBuf::from(value)),
                None => return Err("--config needs a path".into()),
            },
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> ExitCode {
    let path = match config_path() {
        Ok(path) => path,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("slidegate: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load(path.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("slidegate: {error}");
            return ExitCode::from(2);
        }
    };
    // Validate before telemetry starts, so a bad tracing setting is reported
    // as plainly as any other instead of half-starting an exporter.
    let valid = match settings.validate() {
        Ok(valid) => valid,
        Err(error) => {
            eprintln!("slidegate: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(&valid.settings.log, &valid.settings.tracing);

    let application = match Application::build(valid).await {
        Ok(application) => application,
        Err(error) => {
            tracing::error!(%error, "slidegate could not start");
            eprintln!("slidegate: {error}");
            stop_telemetry(telemetry).await;
            return ExitCode::from(2);
        }
    };
    let address = application.address();
    let admin_address = application.admin_address().map(|admin| admin.to_string());
    let envoy_rls_address = application
        .envoy_rls_address()
        .map(|envoy| envoy.to_string());
    let policy = application.example_policy().unwrap_or("demo");
    tracing::info!(
        %address,
        admin_address,
        envoy_rls_address,
        store = application.store_kind(),
        "slidegate is listening; try: curl -i -X POST http://{address}/v1/check -H 'Content-Type: application/json' -d '{{\"policy\":\"{policy}\",\"key\":\"alice\"}}'"
    );
    let result = application.run_until_stopped().await;
    if let Err(error) = &result {
        tracing::error!(%error, "slidegate stopped with an error");
    }
    stop_telemetry(telemetry).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Sends the spans still queued. The exporter blocks on network I/O, so it
/// runs on a blocking thread: on a runtime worker the last batch would be lost.
async fn stop_telemetry(telemetry: telemetry::Telemetry) {
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
}
