//! A readable rendering of one sample, for people learning the tasks.

use std::fmt::Write;

use crate::{Sample, Target, Task, TaskConfig, copy, temporal_order};

/// Symbols per printed line.
const WIDTH: usize = 40;

/// Index of the 1 in each one-hot step of `input`.
fn symbol_ids(input: &[f32], alphabet: usize) -> Vec<usize> {
    input
        .chunks_exact(alphabet)
        .map(|step| step.iter().position(|&v| v == 1.0).expect("one-hot input"))
        .collect()
}

/// `label` then `items` in lines of [`WIDTH`], each line prefixed with its first step.
fn wrapped(out: &mut String, label: &str, items: &[String]) {
    for (line, chunk) in items.chunks(WIDTH).enumerate() {
        let head = if line == 0 { label } else { "" };
        let _ = writeln!(out, "{head:<8} t={:<5} {}", line * WIDTH, chunk.join(" "));
    }
}

pub(crate) fn render(task: &Task, sample: &Sample) -> String {
    let mut out = String::new();
    match (task.config(), &sample.target) {
        (TaskConfig::Adding { seq_len }, Target::Value(target)) => {
            let _ = writeln!(
                out,
                "adding, T = {seq_len}: add the two values marked with [ ]"
            );
            let steps: Vec<&[f32]> = sample.input.chunks_exact(2).collect();
            let items: Vec<String> = steps
                .iter()
                .map(|s| {
                    if s[1] == 1.0 {
                        format!("[{:.3}]", s[0])
                    } else {
                        format!("{:.3}", s[0])
                    }
                })
                .collect();
            wrapped(&mut out, "values", &items);
            let marked: Vec<usize> = (0..steps.len()).filter(|&t| steps[t][1] == 1.0).collect();
            let _ = writeln!(
                out,
                "markers at t = {} and t = {}: {:.4} + {:.4} = target {target:.4}",
                marked[0], marked[1], steps[marked[0]][0], steps[marked[1]][0]
            );
        }
        (TaskConfig::Copy { seq_len }, Target::Steps(target)) => {
            let _ = writeln!(
                out,
                "copy, T = {seq_len}: remember the first {} symbols, recall them after the delimiter ':' (blank '_')",
                copy::RECALL
            );
            let name = |id: usize| match id as u32 {
                copy::BLANK => "_".to_owned(),
                copy::DELIMITER => ":".to_owned(),
                symbol => symbol.to_string(),
            };
            let ids = symbol_ids(&sample.input, copy::ALPHABET);
            wrapped(
                &mut out,
                "input",
                &ids.iter().map(|&id| name(id)).collect::<Vec<_>>(),
            );
            wrapped(
                &mut out,
                "target",
                &target
                    .iter()
                    .map(|&id| name(id as usize))
                    .collect::<Vec<_>>(),
            );
        }
        (TaskConfig::TemporalOrder { seq_len, classes }, Target::Class(label)) => {
            let [first, second] = temporal_order::windows(seq_len);
            let _ = writeln!(
                out,
                "temporal_order, T = {seq_len}, {classes} classes: markers X/Y in [{}, {}) and [{}, {})",
                first.0, first.1, second.0, second.1
            );
            let ids = symbol_ids(&sample.input, temporal_order::ALPHABET);
            let names: Vec<String> = ids
                .iter()
                .map(|&id| temporal_order::SYMBOLS[id].to_string())
                .collect();
            wrapped(&mut out, "input", &names);
            let markers: Vec<(usize, char)> = ids
                .iter()
                .enumerate()
                .filter(|&(_, &id)| id >= temporal_order::MARKER_X)
                .map(|(t, &id)| (t, temporal_order::SYMBOLS[id]))
                .collect();
            let order: String = markers.iter().map(|&(_, c)| c).collect();
            let meaning = if classes == 4 {
                format!("class {label} ({order}; XX 0, XY 1, YX 2, YY 3)")
            } else {
                format!(
                    "class {label} ({order}: {})",
                    if *label == 1 { "different" } else { "same" }
                )
            };
            let _ = writeln!(
                out,
                "markers {} at t = {} and {} at t = {}: {meaning}",
                markers[0].1, markers[0].0, markers[1].1, markers[1].0
            );
        }
        (config, target) => unreachable!("{target:?} is not a target of {config:?}"),
    }
    out
}
