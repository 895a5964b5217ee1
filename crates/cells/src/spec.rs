//! What rnnlab knows about a cell besides its math: the [`CellSpec`] a cell file
//! implements (label, parameter layout, memory), the [`ParamSpec`]s everything about
//! parameters derives from, and the [`CellOptions`] a config may set.

use std::fmt;
use std::ops::Range;

use candle_core::{Result, Tensor, bail};

use crate::Params;
use crate::backend::Backend;

/// The part of a cell that lives in its own file: everything except the registry line.
pub trait CellSpec: fmt::Debug + Send + Sync {
    /// The series label in reports and figures: the config name, then the options that
    /// change the math (`gru (reset before)`).
    fn label(&self) -> String;

    /// Width of the cell state `c` the state carries with `hidden` units: `hidden` for
    /// the LSTM family (more when it also carries earlier gates), 0 for cells without.
    fn cell_state_size(&self, hidden: usize) -> usize {
        let _ = hidden;
        0
    }

    /// See [`crate::Cell::flow_on_cell_state`].
    fn flow_on_cell_state(&self) -> bool {
        false
    }

    /// One layer's parameters with `input` features and `hidden` units, in the order
    /// they are drawn at initialisation and packed for the fused kernel. Parameter
    /// counts, initialisation and kernel offsets all derive from this list.
    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec>;

    /// Floats the fused forward keeps per batch row, step and layer for the backward
    /// (outputs included): what the memory estimate of a run counts.
    fn saved_floats_per_step(&self, hidden: usize) -> usize;

    /// Rejects contradictory options.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Whether these options have a fused kernel for [`crate::Backend::Cuda`] (the
    /// feature `cuda`); the runner refuses `train.device: cuda` for the others.
    fn has_cuda_kernel(&self) -> bool {
        false
    }
}

/// One parameter tensor of a layer: its PyTorch-style name (without the `_l{k}` layer
/// suffix), its shape, and how initialisation treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name without the layer suffix: `weight_ih`, `peephole_i`, ….
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// What it is, for the initialisation schemes.
    pub role: ParamRole,
}

impl ParamSpec {
    /// A parameter named `name` of `shape`.
    pub fn new(name: &str, shape: &[usize], role: ParamRole) -> Self {
        Self {
            name: name.to_owned(),
            shape: shape.to_vec(),
            role,
        }
    }

    /// The full name in layer `layer`: `weight_ih_l0`.
    pub fn name_in(&self, layer: usize) -> String {
        format!("{}_l{layer}", self.name)
    }

    /// Number of scalars.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the initialisation schemes of [`crate::Init`] treat a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    /// Input weights `(G·H, I)`.
    InputWeight,
    /// Recurrent weights `(G·H, H)`, `gates` blocks of `H×H`.
    RecurrentWeight {
        /// Number of `H×H` gate blocks.
        gates: usize,
    },
    /// A recurrent weight that is a vector `(H)` (IndRNN's `u`): the diagonal of the
    /// recurrent matrix.
    RecurrentDiagonal,
    /// A bias; the forget-gate bias offset of [`crate::Init`] goes to block
    /// `forget_block` (of `H` rows) when set.
    Bias {
        /// The block of the forget gate, in the bias that takes the offset.
        forget_block: Option<usize>,
    },
    /// A peephole vector `(H)`.
    Peephole,
    /// The LRU's `ν` `(H)`: drawn by every scheme so that `|λ| = exp(−exp(ν))` is
    /// uniform in the area of the ring `R_MIN ≤ |λ| ≤ R_MAX` (Orvieto et al. 2023).
    RingRadius,
    /// The LRU's `θ` `(H)`: drawn by every scheme so that `arg λ = exp(θ)` is uniform in
    /// `[0, MAX_PHASE]`.
    RingPhase,
    /// The expRNN's packed strictly upper triangle of `A` (`W = exp(A − Aᵀ)`): drawn by
    /// every scheme as the cell's [`crate::SkewInit`] says, a block diagonal of 2×2
    /// rotations (`A[2k][2k+1]` drawn, 0 elsewhere).
    SkewGenerator(crate::SkewInit),
    /// The expRNN's modReLU bias: `U(−0.01, 0.01)` under every scheme, as
    /// Lezcano-Casado's code draws it.
    ModReluBias,
    /// IndRNN's `u` under Li et al. 2018's recipe for sequences of `seq_len` steps (their
    /// adding-task code): drawn from U(0, 2^{1/T}) in the first layer and from
    /// U(2^{−1/T}, 2^{1/T}) in those above, whatever the scheme, and kept within
    /// ±2^{1/T} after every update ([`ParamRole::bound`]).
    BoundedDiagonal {
        /// The sequence length `T` the bound is set for.
        seq_len: usize,
    },
    /// Input weights drawn from N(0, 0.001²) whatever the scheme (Li et al.'s IndRNN
    /// code).
    SmallInputWeight,
    /// A bias that starts at 0 whatever the scheme (Li et al.'s IndRNN code).
    ZeroBias,
    /// Recurrent connections between gates (Greff et al.'s full gate recurrence): like
    /// a peephole, drawn as PyTorch draws weights under its scheme and zero otherwise,
    /// so that the other schemes start from the cell without them.
    GateRecurrence,
}

impl ParamRole {
    /// Whether the state feeds back through this parameter (recurrent matrices and
    /// diagonals, the expRNN's `A`, the LRU's `ν` and `θ`, peepholes, gate recurrence):
    /// the parameters `train.recurrent_lr_scale` applies to (the expRNN's paper trains
    /// its `A` at a tenth of the rate of the rest).
    pub fn is_recurrent(self) -> bool {
        match self {
            Self::RecurrentWeight { .. }
            | Self::RecurrentDiagonal
            | Self::BoundedDiagonal { .. }
            | Self::SkewGenerator(_)
            | Self::RingRadius
            | Self::RingPhase
            | Self::Peephole
            | Self::GateRecurrence => true,
            Self::InputWeight
            | Self::SmallInputWeight
            | Self::Bias { .. }
            | Self::ZeroBias
            | Self::ModReluBias => false,
        }
    }

    /// The bound this parameter is kept within after every update (`|value| ≤ bound`),
    /// if it has one: `2^{1/T}` for [`ParamRole::BoundedDiagonal`].
    pub fn bound(self) -> Option<f64> {
        match self {
            Self::BoundedDiagonal { seq_len } => Some(2f64.powf(1.0 / seq_len as f64)),
            _ => None,
        }
    }
}

/// The PyTorch-style layout `[weight_ih (G·H, I), weight_hh (G·H, H), bias_ih (G·H),
/// bias_hh (G·H)]` of a cell with `gates` gate blocks; `forget_block` is the forget
/// gate's block, which takes the forget-bias offset in `bias_ih`.
pub fn gated_layer(
    gates: usize,
    input: usize,
    hidden: usize,
    forget_block: Option<usize>,
) -> Vec<ParamSpec> {
    let rows = gates * hidden;
    vec![
        ParamSpec::new("weight_ih", &[rows, input], ParamRole::InputWeight),
        ParamSpec::new(
            "weight_hh",
            &[rows, hidden],
            ParamRole::RecurrentWeight { gates },
        ),
        ParamSpec::new("bias_ih", &[rows], ParamRole::Bias { forget_block }),
        ParamSpec::new("bias_hh", &[rows], ParamRole::Bias { forget_block: None }),
    ]
}

/// [`param_ranges`] of a layer of `spec` with exactly `N` parameters, as an array (for the
/// kernels that name each one).
pub(crate) fn layer_ranges<const N: usize>(
    spec: &dyn CellSpec,
    input: usize,
    hidden: usize,
) -> ([Range<usize>; N], usize) {
    let (ranges, total) = param_ranges(&spec.layer_params(input, hidden));
    assert_eq!(ranges.len(), N, "{spec:?} has {} parameters", ranges.len());
    (std::array::from_fn(|i| ranges[i].clone()), total)
}

/// Where each parameter lies in the flat vector a fused kernel receives (the specs'
/// order), and the total length.
pub(crate) fn param_ranges(specs: &[ParamSpec]) -> (Vec<Range<usize>>, usize) {
    let mut start = 0;
    let ranges = specs
        .iter()
        .map(|spec| {
            let range = start..start + spec.len();
            start = range.end;
            range
        })
        .collect();
    (ranges, start)
}

/// One layer's parameter tensors, loaded in [`CellSpec::layer_params`] order with their
/// shapes checked: the fields every cell shares.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The tensors, in spec order.
    pub tensors: Vec<Tensor>,
    /// Input features `I`.
    pub input: usize,
    /// Hidden units `H`.
    pub hidden: usize,
    /// Where the layer's fused kernel runs.
    pub backend: Backend,
}

impl LayerWeights {
    /// Layer `layer`'s parameters of `spec` from `params`.
    pub fn load(
        spec: &dyn CellSpec,
        params: &Params,
        layer: usize,
        input: usize,
        hidden: usize,
    ) -> Result<Self> {
        let tensors = spec
            .layer_params(input, hidden)
            .iter()
            .map(|p| params.tensor(&p.name_in(layer), &p.shape))
            .collect::<Result<_>>()?;
        Ok(Self {
            tensors,
            input,
            hidden,
            backend: params.backend().clone(),
        })
    }

    /// The first four tensors: `weight_ih, weight_hh, bias_ih, bias_hh` in the
    /// PyTorch-style layouts of [`gated_layer`].
    pub fn four(&self) -> Result<[&Tensor; 4]> {
        Ok([self.get(0)?, self.get(1)?, self.get(2)?, self.get(3)?])
    }

    /// The tensor at `index` in spec order.
    pub fn get(&self, index: usize) -> Result<&Tensor> {
        match self.tensors.get(index) {
            Some(tensor) => Ok(tensor),
            None => bail!(
                "layer has {} parameters, not {}",
                self.tensors.len(),
                index + 1
            ),
        }
    }
}

/// The options a config may give a cell besides its name (the `model.*` keys of an
/// experiment file other than sizes and initialisation). Each kind reads the ones it
/// has and refuses the others, so a config cannot set an option that does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CellOptions {
    /// `gru_reset: before` (Cho et al. 2014) instead of PyTorch's reset after.
    pub reset_before: bool,
    /// `ablation.no_input_gate`.
    pub no_input_gate: bool,
    /// `ablation.no_forget_gate`.
    pub no_forget_gate: bool,
    /// `ablation.no_output_gate`.
    pub no_output_gate: bool,
    /// `ablation.coupled_gates`.
    pub coupled_gates: bool,
    /// `ablation.peepholes`.
    pub peepholes: bool,
    /// `ablation.no_input_activation`.
    pub no_input_activation: bool,
    /// `ablation.no_output_activation`.
    pub no_output_activation: bool,
    /// `ablation.full_gate_recurrence`.
    pub full_gate_recurrence: bool,
    /// `indrnn_init: li2018` (IndRNN): Li et al. 2018's recipe for sequences of this
    /// many steps (the runner fills in `task.seq_len`).
    pub indrnn_li2018: Option<usize>,
    /// `scan` (minGRU and minLSTM): sequential or log-space.
    pub scan: crate::ScanForm,
    /// `exprnn_init` (expRNN): how `A` starts.
    pub skew_init: crate::SkewInit,
}

impl CellOptions {
    /// Whether any LSTM ablation is set.
    pub fn has_ablation(&self) -> bool {
        Self {
            reset_before: false,
            scan: crate::ScanForm::default(),
            skew_init: crate::SkewInit::default(),
            indrnn_li2018: None,
            ..*self
        } != Self::default()
    }

    /// Refuses options that `cell` (a config name) does not read.
    pub fn only_defaults(&self, cell: &str) -> std::result::Result<(), String> {
        self.refuse_scan(cell)?;
        self.refuse_skew_init(cell)?;
        self.refuse_indrnn_init(cell)?;
        self.refuse_ablation_and_reset(cell)
    }

    /// Refuses `indrnn_init` for `cell`, which does not read it.
    pub fn refuse_indrnn_init(&self, cell: &str) -> std::result::Result<(), String> {
        if self.indrnn_li2018.is_some() {
            return Err(format!(
                "`model.indrnn_init` is only allowed with `cell: indrnn`, not `{cell}`"
            ));
        }
        Ok(())
    }

    /// Refuses `exprnn_init` for `cell`, which does not read it.
    pub fn refuse_skew_init(&self, cell: &str) -> std::result::Result<(), String> {
        if self.skew_init != crate::SkewInit::default() {
            return Err(format!(
                "`model.exprnn_init` is only allowed with `cell: exprnn`, not `{cell}`"
            ));
        }
        Ok(())
    }

    /// Refuses `scan` for `cell`, which does not read it.
    pub fn refuse_scan(&self, cell: &str) -> std::result::Result<(), String> {
        if self.scan != crate::ScanForm::default() {
            return Err(format!(
                "`model.scan` is only allowed with `cell: mingru` or `minlstm`, not `{cell}`"
            ));
        }
        Ok(())
    }

    /// Refuses the LSTM's and the GRU's options for `cell`, which reads neither.
    pub fn refuse_ablation_and_reset(&self, cell: &str) -> std::result::Result<(), String> {
        if self.has_ablation() {
            return Err(format!(
                "`model.ablation` is only allowed with `cell: lstm` or `peephole_lstm`, not `{cell}`"
            ));
        }
        if self.reset_before {
            return Err(format!(
                "`model.gru_reset` is only allowed with `cell: gru`, not `{cell}`"
            ));
        }
        Ok(())
    }
}
