//! Recurrent cells for rnnlab: vanilla RNN, LSTM (with Greff et al. 2017 ablations and
//! peepholes), GRU (both reset conventions), stacks, linear heads and seeded
//! initialisation, on candle.
//!
//! Shapes follow PyTorch with `batch_first=True`: input `(batch, seq, features)`, output
//! `(batch, seq, hidden)`. Parameter names and gate order follow `torch.nn.RNN/LSTM/GRU`
//! (`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`; LSTM i, f, g, o;
//! GRU r, z, n), so a PyTorch `state_dict` saved as safetensors loads unchanged.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rnnlab_cells::{CellConfig, HeadKind, Init, LstmOptions, Model, ModelConfig};
//!
//! let config = ModelConfig {
//!     cell: CellConfig::new(LstmOptions::default()),
//!     input_size: 2,
//!     hidden: vec![16, 8],
//!     output_size: 1,
//!     head: HeadKind::LastStep,
//! };
//! let params = Init::default().params(&config, 7, DType::F32, &Device::Cpu)?;
//! let model = Model::new(&config, &params)?;
//! let xs = Tensor::zeros((4, 10, 2), DType::F32, &Device::Cpu)?;
//! let (y, hs) = model.forward(&xs)?;
//! assert_eq!(y.dims(), &[4, 1]);
//! assert_eq!(hs.dims(), &[4, 10, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod backend;
mod cell;
#[cfg(feature = "cuda")]
pub mod cuda;
mod exprnn;
mod fused;
mod gru;
mod indrnn;
mod init;
mod layer;
mod lru;
mod lstm;
mod mingru;
mod minlstm;
mod model;
mod packed;
mod params;
pub mod registry;
mod rnn;
mod scan;
mod spec;
mod unroll;

pub use backend::Backend;
pub use cell::{Cell, GradFlow, State};
pub use exprnn::{EXPRNN, ExpRnn, ExpRnnSpec, SkewInit, TAYLOR_DEGREE, recurrent_matrix};
pub use fused::{square_matmul, square_matmul_packed};
pub use gru::{GRU, Gru, GruReset};
pub use indrnn::{INDRNN, IndRnn, IndRnnSpec};
pub use init::{Init, InitScheme};
pub use layer::{CellConfig, CellKind, CellMath, Layer};
pub use lru::{LRU, Lru, LruSpec};
pub use lstm::{Gate, LSTM, Lstm, LstmOptions, PEEPHOLE_LSTM, PeepholeLstm};
pub use mingru::{MINGRU, MinGru, MinGruSpec};
pub use minlstm::{MINLSTM, MinLstm, MinLstmSpec};
pub use model::{HEAD_BIAS, HEAD_WEIGHT, Head, HeadKind, Model, ModelConfig, Stack};
pub use params::Params;
pub use rnn::{Nonlinearity, RNN, RNN_RELU, VanillaRnn};
pub use scan::ScanForm;
pub use spec::{CellOptions, CellSpec, LayerWeights, ParamRole, ParamSpec, gated_layer};
pub use unroll::unroll;
