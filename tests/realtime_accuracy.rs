//! Step-counting accuracy end to end: the twelve recorded walks of the
//! Oxford step counter's validation set (tests/data/oxford-steps, CC BY 4.0,
//! Salvi et al., EMBC 2018), decimated to 50 Hz and streamed through
//! `/ws/realtime` as batches of one second, all walks at once. Each walk's
//! count is the `total_steps` of its `stop_response`; accuracy is the
//! paper's `1 - |counted - true| / true`, averaged over the walks.

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::{Switchboard, realtime_session};

/// The paper's own figure, which the mean must reach.
const REQUIRED_MEAN_ACCURACY: f64 = 0.95;

struct Walk {
    name: String,
    /// (seconds, x, y, z) at the recording's ~100 Hz.
    samples: Vec<[f64; 4]>,
    true_steps: u64,
}

fn load_walks() -> Vec<Walk> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/oxford-steps/validation");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("walks not found in {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "csv"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 12, "the validation set has 12 walks");
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut samples = Vec::new();
            let mut true_steps = 0;
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                let columns: Vec<f64> = line
                    .split(',')
                    .map(|cell| cell.trim().parse().unwrap())
                    .collect();
                samples.push([columns[0] / 1e9, columns[1], columns[2], columns[3]]);
                true_steps = columns[5] as u64;
            }
            Walk {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                samples,
                true_steps,
            }
        })
        .collect()
}

/// Streams one walk at 50 Hz (every second row, real timestamps) in batches
/// of 50 samples and returns the steps the session counted.
async fn count_steps(node: &Switchboard, walk: &Walk) -> u64 {
    let (mut client, _) = realtime_session(node).await;
    let at_50_hz: Vec<Value> = walk
        .samples
        .iter()
        .step_by(2)
        .map(|[t, x, y, z]| json!([t, x, y, z]))
        .collect();
    let mut last_total = 0;
    for batch in at_50_hz.chunks(50) {
        let reply = client
            .call(json!({ "samples": batch }), "step_detection")
            .await;
        last_total = reply["total_steps"].as_u64().unwrap();
    }
    let stop = client
        .call(json!({"action": "stop"}), "stop_response")
        .await;
    let counted = stop["session_stats"]["total_steps"].as_u64().unwrap();
    assert!(counted >= last_total, "stop flushes, never loses steps");
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_walks_are_counted_at_least_95_percent_right() {
    let node = Switchboard::all(None, &[]);
    let walks = load_walks();
    let counts = futures::future::join_all(walks.iter().map(|walk| count_steps(&node, walk))).await;

    println!("| walk | true | counted | accuracy |\n|---|---:|---:|---:|");
    let mut accuracies = Vec::new();
    for (walk, counted) in walks.iter().zip(counts) {
        let accuracy =
            1.0 - (counted as f64 - walk.true_steps as f64).abs() / walk.true_steps as f64;
        println!(
            "| {} | {} | {} | {:.1} % |",
            walk.name,
            walk.true_steps,
            counted,
            accuracy * 100.0
        );
        accuracies.push(accuracy);
    }
    let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    println!("| **mean** | | | **{:.2} %** |", mean * 100.0);
    assert!(
        mean >= REQUIRED_MEAN_ACCURACY,
        "mean accuracy {mean:.4} is below {REQUIRED_MEAN_ACCURACY}"
    );
}
