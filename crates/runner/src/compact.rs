//! Experiment-level tables compacted from the run folders: `runs.parquet` (one row per
//! complete run: id, seed, one column per swept key, the summary), and `metrics.parquet`
//! and `gradflow.parquet` (every run's rows with a `run` column).

use std::collections::BTreeSet;

use polars::prelude::{Column, DataFrame, IntoColumn, NamedFrom, Series};

use crate::store::{
    ExperimentDir, RunStatus, SavedConfig, Summary, Table, Tables, read_config, read_plan,
    read_summary, write_parquet,
};
use crate::sweep::scalar;

/// Rewrites the three experiment-level tables from the complete runs of `experiment_dir`.
/// Returns the number of runs they hold.
pub fn compact(experiment_dir: &ExperimentDir) -> anyhow::Result<usize> {
    let mut complete: Vec<(String, SavedConfig, Summary)> = Vec::new();
    for id in read_plan(experiment_dir)? {
        let dir = experiment_dir.run(&id);
        if let Some(summary) = read_summary(&dir)? {
            complete.push((id, read_config(&dir)?, summary));
        }
    }
    let keys: BTreeSet<String> = complete
        .iter()
        .flat_map(|(_, config, _)| {
            config
                .swept
                .keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
        })
        .collect();

    let height = complete.len();
    let text = |f: &dyn Fn(&(String, SavedConfig, Summary)) -> String| {
        complete.iter().map(f).collect::<Vec<_>>()
    };
    let float = |f: &dyn Fn(&Summary) -> f64| complete.iter().map(|r| f(&r.2)).collect::<Vec<_>>();
    let mut columns: Vec<Column> = vec![
        Series::new("run".into(), text(&|r| r.0.clone())).into_column(),
        Series::new(
            "seed".into(),
            complete.iter().map(|r| r.1.seed).collect::<Vec<_>>(),
        )
        .into_column(),
    ];
    for key in &keys {
        let values = text(&|r| r.1.swept.get(key.as_str()).map(scalar).unwrap_or_default());
        columns.push(Series::new(key.as_str().into(), values).into_column());
    }
    columns.extend([
        Series::new(
            "status".into(),
            text(&|r| match r.2.status {
                RunStatus::Done => "done".into(),
                RunStatus::Diverged => "diverged".into(),
            }),
        )
        .into_column(),
        Series::new("metric".into(), text(&|r| r.2.metric.clone())).into_column(),
        Series::new("final_loss".into(), float(&|s| s.final_loss)).into_column(),
        Series::new("final_metric".into(), float(&|s| s.final_metric)).into_column(),
        Series::new("best_loss".into(), float(&|s| s.best_loss)).into_column(),
        Series::new(
            "steps_to_solve".into(),
            complete
                .iter()
                .map(|r| r.2.steps_to_solve.map(|s| s as u64))
                .collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "steps".into(),
            complete
                .iter()
                .map(|r| r.2.steps as u64)
                .collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new("wall_s".into(), float(&|s| s.wall_s)).into_column(),
        Series::new("samples_per_s".into(), float(&|s| s.samples_per_s)).into_column(),
        Series::new(
            "parameters".into(),
            complete
                .iter()
                .map(|r| r.2.parameters as u64)
                .collect::<Vec<_>>(),
        )
        .into_column(),
    ]);
    write_parquet(
        &experiment_dir.table(Table::Runs),
        DataFrame::new(height, columns)?,
    )?;

    // A run's own tables are the source; a folder shared without them (results/faq in
    // git) falls back to the rows already compacted.
    let mut tables = Tables::new(experiment_dir);
    for table in [Table::Metrics, Table::Gradflow] {
        let mut stacked: Option<DataFrame> = None;
        for (id, _, _) in &complete {
            let mut frame = tables.rows(id, table)?;
            let run = Series::new("run".into(), vec![id.as_str(); frame.height()]);
            frame.insert_column(0, run.into_column())?;
            stacked = Some(match stacked {
                Some(mut all) => {
                    all.vstack_mut(&frame)?;
                    all
                }
                None => frame,
            });
        }
        if let Some(mut frame) = stacked {
            frame.rechunk_mut();
            write_parquet(&experiment_dir.table(table), frame)?;
        }
    }
    Ok(height)
}
