//! An experiment file as a grid of runs: `--set` overrides applied to `base`, the product
//! of `sweep` (times `variants`, if any) over dotted keys, each point resolved and
//! validated once per seed, and the run id that names its folder. The file's schema and
//! validation are in [`crate::config`].

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::config::{ConfigError, RawExperiment, RawRun, RawTuning, RunConfig};
use crate::resources::{MemoryEstimate, machine_memory};

/// One point of the grid.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Short hash of the resolved config and the seed: the run's folder name.
    pub id: String,
    /// The swept keys and their values at this point, in file order.
    pub swept: Vec<(String, Value)>,
    /// The resolved config (defaults filled in), as saved beside the results.
    pub resolved: RawRun,
    /// The validated config.
    pub config: RunConfig,
}

/// A parsed, validated experiment.
#[derive(Debug)]
pub struct Experiment {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name (the results folder).
    pub name: String,
    /// The question it answers.
    pub description: String,
    /// Every run of the grid (points × seeds), with the values of `base` (tuning
    /// replaces them per point before training).
    pub runs: Vec<PlannedRun>,
    /// The grid points: the swept keys and their values, in file order.
    pub points: Vec<Vec<(String, Value)>>,
    /// The evaluation seeds.
    pub seeds: Vec<u64>,
    /// How every point is tuned, if it is.
    pub tuning: Option<Tuning>,
    /// `base` with the overrides applied.
    base: Value,
}

/// A validated `tuning:` section (see [`crate::config::RawTuning`]).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// The keys searched and how each is drawn.
    pub space: Vec<(String, Draw)>,
    /// Configurations per grid point.
    pub trials: usize,
    /// The tuning seeds.
    pub seeds: Vec<u64>,
    /// The budget of each rung, increasing, the last the full `train.steps`.
    pub rungs: Vec<usize>,
    /// The fraction kept at each rung is 1/`eta`.
    pub eta: usize,
}

/// How one tuned key is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Draw {
    /// `10^U(log10 lo, log10 hi)`.
    LogUniform(f64, f64),
    /// `U(lo, hi)`.
    Uniform(f64, f64),
    /// One of the values, each as likely.
    Choice(Vec<Value>),
}

impl Experiment {
    /// Reads and validates `file`; `overrides` are `key=value` settings applied to `base`
    /// first (the value is YAML: `train.lr=3e-4`, `model.hidden=[64,32]`).
    pub fn load(file: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let text =
            std::fs::read_to_string(file).map_err(|err| error(format!("cannot read: {err}")))?;
        let raw: RawExperiment =
            serde_yaml::from_str(&text).map_err(|err| error(err.to_string()))?;
        let name_ok = !raw.name.is_empty()
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !name_ok {
            return Err(error(format!(
                "`name` is {:?}: allowed letters a-z, digits, '-' and '_'",
                raw.name
            )));
        }
        if raw.seeds.is_empty() {
            return Err(error("`seeds` is empty: list at least one seed".into()));
        }
        let mut base = serde_yaml::to_value(&raw.base).map_err(|err| error(err.to_string()))?;
        for setting in overrides {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| error(format!("--set {setting:?}: expected key=value")))?;
            let value: Value =
                serde_yaml::from_str(value).map_err(|err| error(format!("--set {key}: {err}")))?;
            set_dotted(&mut base, key)
                .map(|slot| *slot = value)
                .map_err(|m| error(format!("--set: {m}")))?;
        }

        let sweep: Vec<(String, Vec<Value>)> = raw
            .sweep
            .iter()
            .map(|(key, values)| {
                let key = key
                    .as_str()
                    .ok_or_else(|| error("`sweep` keys must be dotted names".into()))?;
                match values {
                    Value::Sequence(values) if !values.is_empty() => {
                        Ok((key.to_owned(), values.clone()))
                    }
                    _ => Err(error(format!(
                        "`sweep.{key}` must be a non-empty list of values"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        let variants: Vec<Vec<(String, Value)>> = raw
            .variants
            .iter()
            .map(|variant| {
                variant
                    .iter()
                    .map(|(key, value)| match key.as_str() {
                        Some(key) => Ok((key.to_owned(), value.clone())),
                        None => Err(error("`variants` keys must be dotted names".into())),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;

        let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (key, values) in &sweep {
            points = points
                .into_iter()
                .flat_map(|point| {
                    values.iter().map(move |value| {
                        let mut point = point.clone();
                        point.push((key.clone(), value.clone()));
                        point
                    })
                })
                .collect();
        }
        if !variants.is_empty() {
            points = points
                .into_iter()
                .flat_map(|point| {
                    variants
                        .iter()
                        .map(move |variant| [point.clone(), variant.clone()].concat())
                })
                .collect();
        }

        let mut runs = Vec::with_capacity(points.len() * raw.seeds.len());
        for point in &points {
            for (key, _) in point {
                let line = line_of(&text, key);
                set_dotted(&mut base.clone(), key).map_err(|m| error(format!("{line}{m}")))?;
            }
            for &seed in &raw.seeds {
                runs.push(plan_run(&base, point, &[], seed).map_err(error)?);
            }
        }
        let tuning = match &raw.tuning {
            Some(tuning) => Some(validate_tuning(tuning, &base, &raw.seeds).map_err(error)?),
            None => None,
        };
        let mut ids: Vec<&str> = runs.iter().map(|run| run.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(error(format!(
                "two grid points resolve to the same run {}: remove the duplicate",
                pair[0]
            )));
        }
        Ok(Self {
            file: file.to_owned(),
            name: raw.name,
            description: raw.description,
            runs,
            points,
            seeds: raw.seeds,
            tuning,
            base,
        })
    }

    /// The run of grid point `point` with `extra` settings (tuned values, a rung's
    /// budget) on `seed`; the error says what does not validate.
    pub fn plan_run(
        &self,
        point: usize,
        extra: &[(String, Value)],
        seed: u64,
    ) -> Result<PlannedRun, String> {
        plan_run(&self.base, &self.points[point], extra, seed)
    }
}

/// The run of `point` (plus `extra`) on `seed`, resolved from `base` and validated
/// (memory included).
fn plan_run(
    base: &Value,
    point: &[(String, Value)],
    extra: &[(String, Value)],
    seed: u64,
) -> Result<PlannedRun, String> {
    let mut value = base.clone();
    for (key, setting) in point.iter().chain(extra) {
        *set_dotted(&mut value, key)? = setting.clone();
    }
    let described = describe(point);
    let resolved: RawRun = serde_yaml::from_value(value)
        .map_err(|err| format!("at the grid point {described}: {err}"))?;
    let config = resolved
        .validate(seed)
        .and_then(|config| {
            if let Some(available) = machine_memory() {
                MemoryEstimate::of(&config).check(available)?;
            }
            Ok(config)
        })
        .map_err(|err| format!("at the grid point {described}, seed {seed}: {err}"))?;
    Ok(PlannedRun {
        id: run_id(&resolved, seed),
        swept: point.to_vec(),
        resolved,
        config,
    })
}

/// Checks `tuning` against the experiment: keys that exist, draws that make sense,
/// tuning seeds disjoint from the evaluation `seeds`, a steps budget to halve.
fn validate_tuning(tuning: &RawTuning, base: &Value, seeds: &[u64]) -> Result<Tuning, String> {
    if let Some(seed) = tuning.seeds.iter().find(|s| seeds.contains(s)) {
        return Err(format!(
            "`tuning.seeds` and `seeds` share seed {seed}: tuning and evaluation seeds must be \
             disjoint, so that the evaluation does not reuse the runs the choice was made on"
        ));
    }
    if tuning.seeds.is_empty() || tuning.trials == 0 || tuning.eta < 2 {
        return Err("`tuning` needs at least one seed, `trials` >= 1 and `eta` >= 2".into());
    }
    let steps = base
        .get("train")
        .and_then(|train| train.get("steps"))
        .and_then(Value::as_u64)
        .ok_or("`tuning` needs a `train.steps` budget (successive halving grows it)")?
        as usize;
    let mut space = Vec::new();
    for (key, draw) in &tuning.space {
        let key = key
            .as_str()
            .ok_or("`tuning.space` keys must be dotted names")?;
        set_dotted(&mut base.clone(), key).map_err(|m| format!("`tuning.space`: {m}"))?;
        let bounds = |v: &Value| -> Option<(f64, f64)> {
            let pair = v.as_sequence()?;
            match pair.as_slice() {
                [lo, hi] => Some((lo.as_f64()?, hi.as_f64()?)),
                _ => None,
            }
        };
        let draw = match (
            draw.get("log_uniform"),
            draw.get("uniform"),
            draw.get("choice"),
        ) {
            (Some(v), None, None) => match bounds(v) {
                Some((lo, hi)) if lo > 0.0 && lo < hi => Draw::LogUniform(lo, hi),
                _ => {
                    return Err(format!(
                        "`tuning.space.{key}.log_uniform`: give [lo, hi] with 0 < lo < hi"
                    ));
                }
            },
            (None, Some(v), None) => match bounds(v) {
                Some((lo, hi)) if lo < hi => Draw::Uniform(lo, hi),
                _ => {
                    return Err(format!(
                        "`tuning.space.{key}.uniform`: give [lo, hi] with lo < hi"
                    ));
                }
            },
            (None, None, Some(Value::Sequence(values))) if !values.is_empty() => {
                Draw::Choice(values.clone())
            }
            _ => {
                return Err(format!(
                    "`tuning.space.{key}`: allowed {{ log_uniform: [lo, hi] }}, {{ uniform: [lo, hi] }} \
                     or {{ choice: [values] }}"
                ));
            }
        };
        space.push((key.to_owned(), draw));
    }
    if space.is_empty() {
        return Err("`tuning.space` is empty: name at least one key to tune".into());
    }
    let first = tuning
        .min_steps
        .unwrap_or((steps / 9).max(1))
        .clamp(1, steps);
    // Rungs count down from the full budget (steps, steps/eta, steps/eta², …) so that
    // every rung is a round fraction of it: 333, 1000, 3000 rather than 333, 999, 2997.
    let mut rungs = vec![steps];
    while let Some(next) = rungs
        .last()
        .map(|&r| r / tuning.eta)
        .filter(|&next| next >= first && next > 0)
    {
        rungs.push(next);
    }
    rungs.reverse();
    Ok(Tuning {
        space,
        trials: tuning.trials,
        seeds: tuning.seeds.clone(),
        rungs,
        eta: tuning.eta,
    })
}

/// `key = value, …` for messages.
fn describe(point: &[(String, Value)]) -> String {
    if point.is_empty() {
        return "(base)".into();
    }
    let parts: Vec<String> = point
        .iter()
        .map(|(k, v)| format!("{k} = {}", scalar(v)))
        .collect();
    parts.join(", ")
}

/// A value as one line of YAML.
pub fn scalar(value: &Value) -> String {
    match value {
        // Flow style, as written in experiment files: `[64, 64]`, not `- 64 - 64`.
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            )
        }
        _ => serde_yaml::to_string(value)
            .map_or_else(|_| "?".into(), |s| s.trim().replace('\n', " ")),
    }
}

/// `line N: ` where `key:` first appears in the file, for messages about swept keys.
fn line_of(text: &str, key: &str) -> String {
    let needle = format!("{key}:");
    text.lines()
        .position(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('{')
                .trim()
                .starts_with(&needle)
        })
        .map_or(String::new(), |n| format!("line {}: ", n + 1))
}

/// The slot of a dotted key (`model.hidden`) in a resolved run, which must exist.
fn set_dotted<'a>(value: &'a mut Value, key: &str) -> Result<&'a mut Value, String> {
    // Every key a run has, computed once: this runs for every setting of every planned run.
    static KEYS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        leaf_keys(
            &serde_yaml::to_value(schema_run()).expect("serialisable"),
            "",
        )
    });
    let keys = &*KEYS;
    if !keys
        .iter()
        .any(|k| k == key || k.starts_with(&format!("{key}.")))
    {
        return Err(format!(
            "unknown key `{key}`: allowed keys are {}",
            keys.join(", ")
        ));
    }
    let mut slot = value;
    for part in key.split('.') {
        let Value::Mapping(map) = slot else {
            return Err(format!(
                "`{key}`: `{part}` is inside a value that is not a mapping"
            ));
        };
        // Optional keys left out of a saved config (`train.checkpoint_every`, the
        // activation ablations) are added where set.
        slot = map.entry(Value::from(part)).or_insert(Value::Null);
    }
    Ok(slot)
}

/// A run with every optional field set, so that it lists every key a sweep may name.
fn schema_run() -> RawRun {
    let mut run = example_run();
    run.train.checkpoint_every = Some(1);
    run.model.ablation.no_input_activation = true;
    run.model.ablation.no_output_activation = true;
    run.model.ablation.full_gate_recurrence = true;
    run.model.recurrent_gain = 2.0;
    run.model.scan = crate::config::ScanName::LogSpace;
    run.model.exprnn_init = crate::config::SkewInitName::Cayley;
    run.model.indrnn_init = crate::config::IndRnnInitName::Li2018;
    run.train.recurrent_lr_scale = 0.5;
    run.train.device = crate::config::DeviceName::Cuda(0);
    run
}

/// Every dotted leaf key of a value.
fn leaf_keys(value: &Value, prefix: &str) -> Vec<String> {
    match value {
        Value::Mapping(map) => map
            .iter()
            .flat_map(|(k, v)| {
                let key = k.as_str().unwrap_or_default();
                let full = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                let inner = leaf_keys(v, &full);
                if inner.is_empty() { vec![full] } else { inner }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A run with every field present, to list the keys a sweep may name.
fn example_run() -> RawRun {
    serde_yaml::from_str(
        "{task: {kind: adding, seq_len: 2}, model: {cell: lstm, hidden: 1}, train: {steps: 1}}",
    )
    .expect("a valid run")
}

/// 12 hex digits of FNV-1a over the resolved config's YAML and the seed, passed through
/// splitmix64's finaliser so that neighbouring configs get unlike ids.
fn run_id(resolved: &RawRun, seed: u64) -> String {
    // How often checkpoints are written, and on which GPU, changes nothing in the run.
    let mut resolved = resolved.clone();
    resolved.train.checkpoint_every = None;
    resolved.train.device = resolved.train.device.kind();
    let text = format!(
        "{}seed: {seed}\n",
        serde_yaml::to_string(&resolved).expect("serialisable")
    );
    let mut z = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:012x}", (z ^ (z >> 31)) >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_pinned() {
        // The id names the run's folder on disk: a change here orphans existing results.
        let run = example_run();
        assert_eq!(run_id(&run, 0), "71d3570f36a4");
        assert_eq!(run_id(&run, 1), "6c1c8f0214fb");
    }

    #[test]
    fn the_kind_of_device_is_in_the_run_id_but_not_which_gpu() {
        use crate::config::DeviceName;
        let mut run = example_run();
        run.train.device = DeviceName::Cpu;
        // Written out as `cpu`, the default: the pinned id above.
        assert_eq!(run_id(&run, 0), "71d3570f36a4");
        run.train.device = DeviceName::Cuda(0);
        let cuda = run_id(&run, 0);
        assert_ne!(cuda, "71d3570f36a4");
        run.train.device = DeviceName::Cuda(3);
        assert_eq!(run_id(&run, 0), cuda);
    }

    #[test]
    fn devices_parse_as_cpu_cuda_or_cuda_n() {
        use crate::config::DeviceName;
        let parse = |s: &str| DeviceName::try_from(s.to_owned());
        assert_eq!(parse("cpu"), Ok(DeviceName::Cpu));
        assert_eq!(parse("cuda"), Ok(DeviceName::Cuda(0)));
        assert_eq!(parse("cuda:2"), Ok(DeviceName::Cuda(2)));
        for bad in ["gpu", "cuda:", "cuda:-1", "CUDA", "cuda:x"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("train.device") && err.contains(bad), "{err}");
        }
        assert_eq!(String::from(DeviceName::Cuda(2)), "cuda:2");
        assert_eq!(String::from(DeviceName::Cuda(0)), "cuda");
    }

    #[test]
    fn rungs_count_down_from_the_full_budget() {
        let rungs = |steps: usize, min_steps: Option<usize>, eta: usize| {
            let mut run = example_run();
            run.train.steps = Some(steps);
            let tuning: RawTuning = serde_yaml::from_str(&format!(
                "{{ space: {{ train.lr: {{ choice: [0.01] }} }}, seeds: [9], eta: {eta} }}"
            ))
            .unwrap();
            let tuning = RawTuning {
                min_steps,
                ..tuning
            };
            let base = serde_yaml::to_value(run).unwrap();
            validate_tuning(&tuning, &base, &[0]).unwrap().rungs
        };
        // Default shortest rung steps / 9: 3000 / 3 / 3 = 333.
        assert_eq!(rungs(3000, None, 3), vec![333, 1000, 3000]);
        // 3000 / 27 = 111 >= 100, 3000 / 81 = 37 < 100.
        assert_eq!(rungs(3000, Some(100), 3), vec![111, 333, 1000, 3000]);
        assert_eq!(rungs(1000, Some(100), 2), vec![125, 250, 500, 1000]);
        assert_eq!(rungs(5, None, 3), vec![1, 5]);
        assert_eq!(rungs(2, None, 3), vec![2]);
    }

    #[test]
    fn allowed_keys_are_listed() {
        let mut value = serde_yaml::to_value(example_run()).unwrap();
        let err = set_dotted(&mut value, "model.celll").unwrap_err();
        assert!(err.contains("unknown key `model.celll`"), "{err}");
        assert!(err.contains("model.cell, model.hidden"), "{err}");
        assert!(err.contains("train.clip.norm"), "{err}");
    }
}
