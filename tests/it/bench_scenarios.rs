//! Each `linkcast bench` scenario, small and bounded, against a real in-process `serve`: the
//! accounting must close (expected = received, nothing lost, nothing duplicated).

use clap::Parser;
use linkcast::bench::{run_load, LoadArgs};
use linkcast::config::Config;
use linkcast::serve::ServeHandle;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

async fn start_serve() -> ServeHandle {
    crate::support::start_serve(Config::default(), false).await
}

fn args(serve: &ServeHandle, flags: &str) -> LoadArgs {
    let pid = std::process::id().to_string();
    let http = format!("http://{}", serve.http_addr());
    let mut argv = vec!["bench", "--http", &http, "--quiet", "--hold", "0", "--drain", "10", "--server-pid", &pid];
    argv.extend(flags.split_whitespace());
    Cli::parse_from(argv).load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_accounts_exactly() {
    let serve = start_serve().await;
    for (scenario, flags) in [
        ("fanout", "-n 50 -r 400 -d 1"),
        ("rooms", "-n 10 --rooms 5 -r 400 -d 1"),
        ("connect", "-n 300"),
        ("connect", "-n 100 --client full"),
        ("resume", "-n 40 -r 300 -d 1.5 --drops 2 --drop-fraction 0.5 --reconnect-ms 10"),
    ] {
        let report = run_load(scenario, args(&serve, flags)).await.expect("bench runs");
        let text = report.to_text();
        assert_eq!(report.connections.failed, 0, "{text}");
        assert!(report.deliveries.expected > 0, "{text}");
        assert!(report.is_exact(), "{scenario}: {text}");
        assert_eq!(report.deliveries.publish_errors, 0, "{text}");
        assert!(report.latency_us.count == report.deliveries.received, "{text}");
        // Lean subscribers (the default for linkcast fanout/rooms/connect) track seqs per
        // connection: nothing skipped, nothing missing, nothing ended early.
        assert_eq!(report.client.lean, scenario != "resume" && !flags.contains("--client full"), "{text}");
        if report.client.lean {
            assert_eq!((report.deliveries.holes, report.deliveries.missing, report.connections.ended), (0, 0, 0), "{text}");
        }
        if scenario == "resume" {
            assert!(report.connections.drops > 0 && report.connections.reconnects >= report.connections.drops, "{text}");
        }
        // This process is the server here: CPU was sampled. `connect` and `rooms` put too little
        // load in their window for /proc's 10 ms clock ticks to register reliably.
        if matches!(scenario, "fanout" | "resume") {
            assert!(report.server.cpu_secs > 0.0, "{text}");
        }
    }
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_plot_and_round_trip() {
    let serve = start_serve().await;
    let report = run_load("fanout", args(&serve, "-n 20 -r 200 -d 1")).await.expect("bench runs");
    let dir = std::env::temp_dir().join(format!("linkcast-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let json = dir.join("r.json");
    report.write_json(&json).expect("json");
    let back = linkcast::bench::report::Report::read_json(&json).expect("read back");
    assert_eq!(back.deliveries.received, report.deliveries.received);
    let svg = dir.join("r.svg");
    linkcast::bench::plot::write_svg(&report, &svg).expect("plot");
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(text.contains("<svg") && text.contains("deliveries/s"));
    let table = linkcast::bench::report::compare_table(&[report.clone(), back], false);
    assert!(table.contains("1.00×"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
    serve.shutdown().await;
}
