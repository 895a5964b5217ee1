//! Every cell rnnlab knows, in one list: configs look names up here, figures take
//! their colours and series order from it, `rnnlab bench` times its cells and the cell
//! test suites (contract, fused against unrolled, finite differences) run every
//! configuration its entries give. Adding a cell is one file and one line below.

use crate::layer::{CellConfig, CellKind};
use crate::spec::CellOptions;

/// The cells, in the order figures and tables list them.
pub static CELLS: &[&CellKind] = &[
    &crate::rnn::RNN,
    &crate::rnn::RNN_RELU,
    &crate::lstm::LSTM,
    &crate::gru::GRU,
    &crate::lstm::PEEPHOLE_LSTM,
    &crate::indrnn::INDRNN,
    &crate::mingru::MINGRU,
    &crate::minlstm::MINLSTM,
    &crate::lru::LRU,
    &crate::exprnn::EXPRNN,
];

/// The entry named `name` in configs.
pub fn find(name: &str) -> Option<&'static CellKind> {
    CELLS.iter().copied().find(|kind| kind.name == name)
}

/// The cell named `name` in a config, with `options`; the error names the allowed cells
/// or the option that does not apply.
pub fn parse(name: &str, options: &CellOptions) -> Result<CellConfig, String> {
    match find(name) {
        Some(kind) => (kind.configure)(options),
        None => Err(format!(
            "unknown cell `{name}`: allowed {}",
            CELLS
                .iter()
                .map(|kind| kind.name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A cell label as figures and reports show it: the config name in front replaced by
/// the entry's display name (`gru (reset before)` → `GRU (reset before)`); a label no
/// entry starts stays as it is.
pub fn display_label(label: &str) -> String {
    let (base, rest) = label.split_at(label.find(" (").unwrap_or(label.len()));
    match find(base) {
        Some(kind) => format!("{}{rest}", kind.display),
        None => label.to_owned(),
    }
}

/// Every configuration the cell test suites run, from every entry.
pub fn examples() -> Vec<CellConfig> {
    CELLS.iter().flat_map(|kind| (kind.examples)()).collect()
}

/// The labels with a fixed colour, in series order, with their colours (sRGB).
pub fn label_colors() -> impl Iterator<Item = (&'static str, [u8; 3])> {
    CELLS.iter().flat_map(|kind| kind.colors.iter().copied())
}

/// A label's place in [`label_colors`], if it has a fixed colour.
pub fn label_rank(label: &str) -> Option<usize> {
    label_colors().position(|(known, _)| known == label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_unique_and_every_example_has_a_colour() {
        let names: std::collections::BTreeSet<_> = CELLS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), CELLS.len());
        let labels: Vec<_> = label_colors().map(|(label, _)| label).collect();
        let unique: std::collections::BTreeSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len());
        assert_eq!(display_label("gru (reset before)"), "GRU (reset before)");
        assert_eq!(display_label("peephole_lstm"), "peephole LSTM");
        assert_eq!(
            display_label("lstm (no forget gate)"),
            "LSTM (no forget gate)"
        );
        assert_eq!(display_label("unknown (x)"), "unknown (x)");
        // Each entry's name configures to a cell whose label has a colour.
        for kind in CELLS {
            let config = (kind.configure)(&Default::default()).unwrap();
            assert!(label_rank(&config.label()).is_some(), "{}", kind.name);
        }
    }

    #[test]
    fn every_cell_refuses_the_options_of_other_cells() {
        // Each cell-specific option, with the cells that read it; every other cell must
        // refuse it rather than train without it.
        let options: [(&str, CellOptions, &[&str]); 3] = [
            (
                "scan",
                CellOptions {
                    scan: crate::ScanForm::LogSpace,
                    ..CellOptions::default()
                },
                &["mingru", "minlstm"],
            ),
            (
                "exprnn_init",
                CellOptions {
                    skew_init: crate::SkewInit::Cayley,
                    ..CellOptions::default()
                },
                &["exprnn"],
            ),
            (
                "indrnn_init",
                CellOptions {
                    indrnn_li2018: Some(7),
                    ..CellOptions::default()
                },
                &["indrnn"],
            ),
        ];
        for (option, value, readers) in options {
            for kind in CELLS {
                let configured = (kind.configure)(&value);
                match configured {
                    Ok(_) => assert!(readers.contains(&kind.name), "{} took {option}", kind.name),
                    Err(e) => {
                        assert!(!readers.contains(&kind.name), "{}: {e}", kind.name);
                        assert!(e.contains(option), "{}: {e}", kind.name);
                    }
                }
            }
        }
    }
}
