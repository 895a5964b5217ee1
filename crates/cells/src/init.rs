//! Seeded initialisation schemes.
//!
//! Weights come from our own ChaCha8 stream (candle's CPU device cannot be seeded), drawn
//! in f64 in a fixed order (layer by layer, each cell's parameters in the order of its
//! [`crate::CellSpec::layer_params`]: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`, then
//! e.g. the peepholes i, f, o; then the head), so the same seed gives the same weights
//! bit for bit on every machine.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Params;
use crate::layer::CellConfig;
use crate::model::{HEAD_BIAS, HEAD_WEIGHT, ModelConfig};
use crate::spec::{ParamRole, ParamSpec};

/// How weights are drawn. A recurrent weight that is a vector (IndRNN's diagonal `u`)
/// is `U(−1/√H, 1/√H)` under `Pytorch` and 1 under the others (the diagonal of the
/// identity, the positive orthogonal matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitScheme {
    /// PyTorch's default: every weight, bias and peephole `U(−1/√H, 1/√H)`; the head as
    /// `torch.nn.Linear` (`U(−1/√fan_in, 1/√fan_in)`).
    #[default]
    Pytorch,
    /// Keras's default: input weights glorot-uniform over the whole `(I, G·H)` kernel,
    /// recurrent weights one orthogonal `(H, G·H)` matrix, biases and peepholes zero; the
    /// head as `Dense` (glorot-uniform, zero bias). Keras's `unit_forget_bias=True` is
    /// the separate forget-bias offset of [`Init`].
    Keras,
    /// Each gate's `H×H` recurrent block an independent random orthogonal matrix, input
    /// weights glorot-uniform, biases and peepholes zero; the head as in `Pytorch`.
    Orthogonal,
    /// IRNN (Le et al. 2015): each gate's recurrent block the identity, input weights
    /// `N(0, 0.001²)`, biases and peepholes zero; the head as in `Pytorch`. Le et al. use
    /// it with the ReLU RNN.
    Identity,
}

/// An initialisation: a scheme, a forget-gate bias offset and a recurrent gain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    /// How weights are drawn.
    pub scheme: InitScheme,
    /// Added once to the forget gate's bias (`bias_ih`'s f rows; PyTorch has two bias
    /// vectors and the offset must not count twice). Jozefowicz et al. 2015 recommend 1.
    /// Cells without a forget gate (RNN, GRU, the no-forget-gate LSTM) ignore it.
    pub forget_bias: f64,
    /// Multiplies every recurrent weight as drawn (default 1). With an orthogonal or
    /// identity recurrent matrix it sets the spectral radius, as in Pascanu et al. 2013's
    /// exploding-gradient experiments (radius > 1).
    pub recurrent_gain: f64,
}

impl Default for Init {
    fn default() -> Self {
        Self {
            scheme: InitScheme::default(),
            forget_bias: 0.0,
            recurrent_gain: 1.0,
        }
    }
}

impl Init {
    /// Draws every parameter of `config` from `seed`.
    pub fn params(
        &self,
        config: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Params> {
        config.validate()?;
        let mut draw = Draw {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params: Params::new(),
        };
        let mut input_size = config.input_size;
        for (layer, &hidden_size) in config.hidden.iter().enumerate() {
            self.layer(&mut draw, &config.cell, layer, input_size, hidden_size)?;
            input_size = hidden_size;
        }
        let (out, fan_in) = (config.output_size, input_size);
        let (weight, bias) = match self.scheme {
            InitScheme::Keras => (draw.glorot(out, fan_in), vec![0.0; out]),
            _ => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (draw.uniform(out * fan_in, bound), draw.uniform(out, bound))
            }
        };
        draw.put(HEAD_WEIGHT, weight, &[out, fan_in])?;
        draw.put(HEAD_BIAS, bias, &[out])?;
        draw.params.cast(dtype, device)
    }

    fn layer(
        &self,
        draw: &mut Draw,
        cell: &CellConfig,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<()> {
        for spec in cell.layer_params(input_size, hidden_size) {
            let mut values = self.draw(draw, &spec, hidden_size, layer);
            if let ParamRole::RecurrentWeight { .. } | ParamRole::RecurrentDiagonal = spec.role {
                values.iter_mut().for_each(|v| *v *= self.recurrent_gain);
            }
            draw.put(&spec.name_in(layer), values, &spec.shape)?;
        }
        Ok(())
    }

    /// The values of one parameter of layer `layer` (0 the first), with `hidden` units.
    fn draw(&self, draw: &mut Draw, spec: &ParamSpec, hidden: usize, layer: usize) -> Vec<f64> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let (len, rows) = (spec.len(), spec.shape[0]);
        match (spec.role, self.scheme) {
            // The LRU's parametrisation of its eigenvalues, whatever the scheme.
            (ParamRole::RingRadius, _) => {
                let (lo, hi) = (crate::lru::R_MIN.powi(2), crate::lru::R_MAX.powi(2));
                (0..len)
                    .map(|_| {
                        let u: f64 = draw.rng.random();
                        (-0.5 * (u * (hi - lo) + lo).ln()).ln()
                    })
                    .collect()
            }
            (ParamRole::RingPhase, _) => (0..len)
                .map(|_| {
                    (crate::lru::MAX_PHASE * draw.rng.random::<f64>())
                        .max(f64::MIN_POSITIVE)
                        .ln()
                })
                .collect(),
            (ParamRole::SkewGenerator(skew_init), _) => {
                let mut values = vec![0.0; len];
                for k in 0..hidden / 2 {
                    let i = 2 * k;
                    let u: f64 = draw.rng.random();
                    values[crate::exprnn::packed_index(i, i + 1, hidden)] =
                        skew_init.block_angle(u);
                }
                values
            }
            (ParamRole::ModReluBias, _) => draw.uniform(len, crate::exprnn::MODRELU_BIAS_BOUND),
            // Li et al.'s IndRNN recipe, whatever the scheme.
            (ParamRole::BoundedDiagonal { .. }, _) => {
                let high = spec.role.bound().expect("a bounded diagonal has a bound");
                let low = if layer == 0 { 0.0 } else { 1.0 / high };
                (0..len)
                    .map(|_| low + (high - low) * draw.rng.random::<f64>())
                    .collect()
            }
            (ParamRole::SmallInputWeight, _) => draw.normal(len, 1e-3),
            (ParamRole::ZeroBias, _) => vec![0.0; len],
            (_, InitScheme::Pytorch) => {
                let mut values = draw.uniform(len, bound);
                self.add_forget_bias(spec, hidden, &mut values);
                values
            }
            (ParamRole::InputWeight, InitScheme::Identity) => draw.normal(len, 1e-3),
            (ParamRole::InputWeight, _) => draw.glorot(rows, len / rows),
            (ParamRole::RecurrentWeight { .. }, InitScheme::Keras) => draw.orthogonal(rows, hidden),
            (ParamRole::RecurrentWeight { gates }, InitScheme::Orthogonal) => (0..gates)
                .flat_map(|_| draw.orthogonal(hidden, hidden))
                .collect(),
            (ParamRole::RecurrentWeight { .. }, InitScheme::Identity) => {
                let eye =
                    (0..hidden * hidden).map(|k| if k / hidden == k % hidden { 1.0 } else { 0.0 });
                eye.cycle().take(len).collect()
            }
            // The diagonal of an identity (and of the positive orthogonal) matrix.
            (ParamRole::RecurrentDiagonal, _) => vec![1.0; len],
            (ParamRole::Bias { .. } | ParamRole::Peephole | ParamRole::GateRecurrence, _) => {
                let mut values = vec![0.0; len];
                self.add_forget_bias(spec, hidden, &mut values);
                values
            }
        }
    }

    /// Adds [`Init::forget_bias`] to the forget gate's rows of the bias that takes it.
    fn add_forget_bias(&self, spec: &ParamSpec, hidden: usize, values: &mut [f64]) {
        if let ParamRole::Bias {
            forget_block: Some(block),
        } = spec.role
        {
            for value in &mut values[block * hidden..(block + 1) * hidden] {
                *value += self.forget_bias;
            }
        }
    }
}

/// The random stream and the parameters drawn so far (in f64 on the CPU).
struct Draw {
    rng: ChaCha8Rng,
    params: Params,
}

impl Draw {
    fn put(&mut self, name: &str, values: Vec<f64>, dims: &[usize]) -> Result<()> {
        let tensor = Tensor::from_vec(values, dims, &Device::Cpu)?;
        self.params.insert(name, Var::from_tensor(&tensor)?);
        Ok(())
    }

    /// `count` draws from `U(−bound, bound)`.
    fn uniform(&mut self, count: usize, bound: f64) -> Vec<f64> {
        (0..count)
            .map(|_| bound * (2.0 * self.rng.random::<f64>() - 1.0))
            .collect()
    }

    /// `count` draws from `N(0, std²)` (Box–Muller, both values used).
    fn normal(&mut self, count: usize, std: f64) -> Vec<f64> {
        let mut values = Vec::with_capacity(count + 1);
        while values.len() < count {
            // 1 − u lies in (0, 1], so the logarithm is finite.
            let radius = (-2.0 * (1.0 - self.rng.random::<f64>()).ln()).sqrt();
            let angle = std::f64::consts::TAU * self.rng.random::<f64>();
            values.push(std * radius * angle.cos());
            values.push(std * radius * angle.sin());
        }
        values.truncate(count);
        values
    }

    /// Glorot-uniform `(rows, cols)` weight in PyTorch layout: Keras's kernel is its
    /// transpose, with fan_in = `cols` and fan_out = `rows`; the bound is the same.
    fn glorot(&mut self, rows: usize, cols: usize) -> Vec<f64> {
        let bound = (6.0 / (rows + cols) as f64).sqrt();
        self.uniform(rows * cols, bound)
    }

    /// A random `(rows, cols)` matrix with orthonormal columns (rows ≥ cols) or rows,
    /// row-major: Keras's `Orthogonal` — QR of a Gaussian matrix, signs fixed so that
    /// `R` has a positive diagonal (here by modified Gram–Schmidt, which gives that `Q`).
    fn orthogonal(&mut self, rows: usize, cols: usize) -> Vec<f64> {
        let (long, short) = (rows.max(cols), rows.min(cols));
        // Column j of the long×short Gaussian matrix is columns[j].
        let mut columns: Vec<Vec<f64>> = (0..short).map(|_| self.normal(long, 1.0)).collect();
        for j in 0..short {
            let (done, rest) = columns.split_at_mut(j);
            let column = &mut rest[0];
            for q in done.iter() {
                let dot: f64 = q.iter().zip(column.iter()).map(|(a, b)| a * b).sum();
                column
                    .iter_mut()
                    .zip(q)
                    .for_each(|(value, q)| *value -= dot * q);
            }
            let norm = column.iter().map(|v| v * v).sum::<f64>().sqrt();
            column.iter_mut().for_each(|value| *value /= norm);
        }
        let mut out = vec![0.0; rows * cols];
        for (j, column) in columns.iter().enumerate() {
            for (i, &value) in column.iter().enumerate() {
                // rows ≥ cols: Q itself; rows < cols: Qᵀ.
                let index = if rows >= cols {
                    i * cols + j
                } else {
                    j * cols + i
                };
                out[index] = value;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeadKind, LstmOptions};

    fn lstm_config(options: LstmOptions) -> ModelConfig {
        ModelConfig {
            cell: CellConfig::new(options),
            input_size: 3,
            hidden: vec![6, 4],
            output_size: 2,
            head: HeadKind::LastStep,
        }
    }

    fn values(params: &Params, name: &str) -> Vec<f64> {
        let tensor = params.get(name).unwrap().as_tensor();
        tensor
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn draw(scheme: InitScheme, forget_bias: f64) -> Params {
        let init = Init {
            scheme,
            forget_bias,
            ..Init::default()
        };
        init.params(
            &lstm_config(LstmOptions::default()),
            11,
            DType::F64,
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let config = lstm_config(LstmOptions::peephole());
        let a = Init::default()
            .params(&config, 5, DType::F32, &Device::Cpu)
            .unwrap();
        let b = Init::default()
            .params(&config, 5, DType::F32, &Device::Cpu)
            .unwrap();
        let c = Init::default()
            .params(&config, 6, DType::F32, &Device::Cpu)
            .unwrap();
        for (name, _) in a.iter() {
            assert_eq!(values(&a, name), values(&b, name), "{name}");
            assert_ne!(values(&a, name), values(&c, name), "{name}");
        }
    }

    #[test]
    fn pytorch_scheme_bounds() {
        // Layer 0 has H = 6: U(−1/√6, 1/√6); layer 1 has H = 4: U(−0.5, 0.5).
        let params = draw(InitScheme::Pytorch, 0.0);
        for (name, bound) in [("weight_ih_l0", 6f64.sqrt().recip()), ("bias_hh_l1", 0.5)] {
            let v = values(&params, name);
            assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
            // 4·H draws spread over the interval, not bunched at 0.
            assert!(v.iter().any(|x| x.abs() > 0.5 * bound), "{name}");
        }
        // The head reads H = 4 units: torch.nn.Linear's U(−1/2, 1/2).
        assert!(values(&params, HEAD_WEIGHT).iter().all(|x| x.abs() <= 0.5));
    }

    #[test]
    fn forget_bias_is_added_once_to_the_forget_rows() {
        let without = draw(InitScheme::Keras, 0.0);
        let with = draw(InitScheme::Keras, 1.0);
        let b = values(&with, "bias_ih_l0");
        // Keras biases start at zero; rows 6..12 are f (order i, f, g, o with H = 6).
        assert_eq!(&b[..6], &[0.0; 6]);
        assert_eq!(&b[6..12], &[1.0; 6]);
        assert_eq!(&b[12..], &[0.0; 12]);
        assert_eq!(values(&with, "bias_hh_l0"), vec![0.0; 24]);
        assert_eq!(
            values(&with, "weight_hh_l0"),
            values(&without, "weight_hh_l0")
        );
        // A coupled LSTM has rows f, g, o: the offset lands in rows 0..H.
        let cifg = LstmOptions {
            coupled_input_forget: true,
            ..LstmOptions::default()
        };
        let init = Init {
            scheme: InitScheme::Identity,
            forget_bias: 1.0,
            ..Init::default()
        };
        let params = init
            .params(&lstm_config(cifg), 1, DType::F64, &Device::Cpu)
            .unwrap();
        assert_eq!(
            values(&params, "bias_ih_l0"),
            [[1.0; 6], [0.0; 6], [0.0; 6]].concat()
        );
    }

    /// `(rows, cols)` row-major weights `w` as columns: wᵀw for rows ≥ cols.
    fn gram(w: &[f64], rows: usize, cols: usize) -> Vec<Vec<f64>> {
        (0..cols)
            .map(|a| {
                (0..cols)
                    .map(|b| (0..rows).map(|r| w[r * cols + a] * w[r * cols + b]).sum())
                    .collect()
            })
            .collect()
    }

    fn assert_identity(matrix: &[Vec<f64>]) {
        for (i, row) in matrix.iter().enumerate() {
            for (j, value) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((value - want).abs() < 1e-12, "[{i}][{j}] = {value}");
            }
        }
    }

    #[test]
    fn keras_recurrent_weights_have_orthonormal_columns() {
        // weight_hh (4H, H) is the transpose of Keras's (H, 4H) orthogonal kernel.
        let params = draw(InitScheme::Keras, 0.0);
        assert_identity(&gram(&values(&params, "weight_hh_l0"), 24, 6));
        assert_eq!(values(&params, HEAD_BIAS), vec![0.0; 2]);
    }

    #[test]
    fn orthogonal_and_identity_schemes_work_per_gate_block() {
        let orthogonal = draw(InitScheme::Orthogonal, 0.0);
        let identity = draw(InitScheme::Identity, 0.0);
        let (w_orth, w_id) = (
            values(&orthogonal, "weight_hh_l1"),
            values(&identity, "weight_hh_l1"),
        );
        for gate in 0..4 {
            let block = |w: &[f64]| w[gate * 16..(gate + 1) * 16].to_vec();
            assert_identity(&gram(&block(&w_orth), 4, 4));
            let eye: Vec<Vec<f64>> = block(&w_id).chunks(4).map(<[f64]>::to_vec).collect();
            assert_identity(&eye);
        }
        let input = values(&identity, "weight_ih_l0");
        let std = (input.iter().map(|x| x * x).sum::<f64>() / input.len() as f64).sqrt();
        assert!(
            std > 3e-4 && std < 3e-3,
            "N(0, 0.001²) draws have rms {std}"
        );
    }

    #[test]
    fn recurrent_gain_scales_only_the_recurrent_weights() {
        let gained = Init {
            scheme: InitScheme::Orthogonal,
            recurrent_gain: 1.5,
            ..Init::default()
        }
        .params(
            &lstm_config(LstmOptions::default()),
            11,
            DType::F64,
            &Device::Cpu,
        )
        .unwrap();
        let plain = draw(InitScheme::Orthogonal, 0.0);
        // 1.5 × an orthogonal block: its Gram matrix is 2.25 I, so every singular value
        // (and the spectral radius) is 1.5.
        let w = values(&gained, "weight_hh_l1");
        let gram_scaled: Vec<Vec<f64>> = gram(&w[..16], 4, 4)
            .into_iter()
            .map(|row| row.into_iter().map(|v| v / 2.25).collect())
            .collect();
        assert_identity(&gram_scaled);
        for name in ["weight_ih_l0", "bias_ih_l0", HEAD_WEIGHT] {
            assert_eq!(values(&gained, name), values(&plain, name), "{name}");
        }
    }

    #[test]
    fn orthogonal_wide_matrix_has_orthonormal_rows() {
        let mut draw = Draw {
            rng: ChaCha8Rng::seed_from_u64(0),
            params: Params::new(),
        };
        let w = draw.orthogonal(3, 8);
        let transposed: Vec<f64> = (0..8)
            .flat_map(|c| (0..3).map(move |r| (r, c)))
            .map(|(r, c)| w[r * 8 + c])
            .collect();
        assert_identity(&gram(&transposed, 8, 3));
    }
}
