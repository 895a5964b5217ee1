//! How long one training batch takes to generate: 32 sequences of length 1000 per task
//! (median of 50 batches).
//!
//!     cargo run --release -p rnnlab-tasks --example batch_speed

use std::time::Instant;

use rnnlab_tasks::{Split, Task, TaskConfig};

fn main() {
    let configs = [
        TaskConfig::Adding { seq_len: 1000 },
        TaskConfig::Copy { seq_len: 1000 },
        TaskConfig::TemporalOrder {
            seq_len: 1000,
            classes: 4,
        },
    ];
    for config in configs {
        let task = Task::new(config).expect("valid task");
        let mut times: Vec<f64> = (0..50u64)
            .map(|k| {
                let start = Instant::now();
                let batch = task.batch(0, Split::Train, 32 * k, 32);
                std::hint::black_box(&batch);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{:<15} B=32 T=1000: {:.3} ms per batch (median of 50)",
            task.name(),
            times[25]
        );
    }
}
