//! Optimisers and gradient clipping, with PyTorch's update rules.
//!
//! Our own rather than candle-nn's: candle-nn's `AdamW` defaults to weight decay 0.01 and
//! keeps its moments private (no checkpoints), and it has no RMSprop or momentum SGD.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::{Clip, Optimizer};

/// Adam's β₁, β₂ and ε, PyTorch's defaults.
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
/// RMSprop's smoothing constant α, PyTorch's default.
const RMSPROP_ALPHA: f64 = 0.99;
/// ε of Adam and RMSprop, PyTorch's default.
const EPS: f64 = 1e-8;

/// An optimiser over a fixed list of parameters.
pub struct Trainer {
    optimizer: Optimizer,
    vars: Vec<Var>,
    /// Per parameter: Adam's (m, v), RMSprop's (v, –), SGD's (momentum buffer, –).
    slots: Vec<(Tensor, Tensor)>,
    /// Per parameter: the factor of its learning rate (1 unless set).
    lr_scales: Vec<f64>,
    steps: i32,
}

impl Trainer {
    /// Zeroed optimiser state for `vars`.
    pub fn new(optimizer: Optimizer, vars: Vec<Var>) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            optimizer,
            lr_scales: vec![1.0; vars.len()],
            vars,
            slots,
            steps: 0,
        })
    }

    /// Multiplies the learning rate of the parameter at `index` (in `vars` order) by
    /// `scale`, as a PyTorch parameter group with its own `lr` would.
    pub fn scale_lr(&mut self, index: usize, scale: f64) {
        self.lr_scales[index] = scale;
    }

    /// The update counter and every parameter's two slots (Adam's m and v, RMSprop's
    /// average, SGD's momentum buffer and an unused zero), for a checkpoint.
    pub fn state(&self) -> (i32, &[(Tensor, Tensor)]) {
        (self.steps, &self.slots)
    }

    /// Restores the state [`Trainer::state`] gave (same parameters, same order).
    pub fn restore(&mut self, steps: i32, slots: Vec<(Tensor, Tensor)>) -> Result<()> {
        if slots.len() != self.slots.len() {
            candle_core::bail!(
                "{} optimiser slots for {} parameters",
                slots.len(),
                self.slots.len()
            );
        }
        for ((first, second), (old, _)) in slots.iter().zip(&self.slots) {
            if first.dims() != old.dims() || second.dims() != old.dims() {
                candle_core::bail!(
                    "optimiser slots of shape {:?}, expected {:?}",
                    first.dims(),
                    old.dims()
                );
            }
        }
        self.steps = steps;
        self.slots = slots;
        Ok(())
    }

    /// One update from `grads` (parameters without a gradient are left alone).
    ///
    /// - Adam: `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    ///   `p ← p − lr·m̂/(√v̂ + ε)` with bias-corrected `m̂, v̂`.
    /// - RMSprop: `v ← αv + (1−α)g²`, `p ← p − lr·g/(√v + ε)`.
    /// - SGD: `b ← μb + g` (`b = g` on the first step), `p ← p − lr·b`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let parameters = self.vars.iter().zip(self.slots.iter_mut());
        for ((var, (first, second)), &scale) in parameters.zip(&self.lr_scales) {
            let Some(g) = grads.get(var) else { continue };
            let update = match self.optimizer.scaled(scale) {
                Optimizer::Adam { lr } => {
                    let (b1, b2) = ADAM_BETAS;
                    *first = ((&*first * b1)? + (g * (1.0 - b1))?)?;
                    *second = ((&*second * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let m_hat = (&*first / (1.0 - b1.powi(self.steps)))?;
                    let v_hat = (&*second / (1.0 - b2.powi(self.steps)))?;
                    ((m_hat / (v_hat.sqrt()? + EPS)?)? * lr)?
                }
                Optimizer::Rmsprop { lr } => {
                    *first = ((&*first * RMSPROP_ALPHA)? + (g.sqr()? * (1.0 - RMSPROP_ALPHA))?)?;
                    ((g / (first.sqrt()? + EPS)?)? * lr)?
                }
                Optimizer::Sgd { lr, momentum } => {
                    *first = if self.steps == 1 {
                        g.clone()
                    } else {
                        ((&*first * momentum)? + g)?
                    };
                    (&*first * lr)?
                }
            };
            var.set(&(var.as_tensor() - update)?)?;
        }
        Ok(())
    }
}

impl Optimizer {
    /// The same optimiser with its learning rate times `scale` (exact when 1).
    fn scaled(self, scale: f64) -> Self {
        match self {
            Self::Adam { lr } => Self::Adam { lr: lr * scale },
            Self::Rmsprop { lr } => Self::Rmsprop { lr: lr * scale },
            Self::Sgd { lr, momentum } => Self::Sgd {
                lr: lr * scale,
                momentum,
            },
        }
    }
}

/// Clips `grads` of `vars` in place as `clip` says; returns the global L2 norm of the
/// gradients before clipping. Norm clipping scales by `max/(norm + 1e-6)` when the norm
/// exceeds `max`, as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_gradients(grads: &mut GradStore, vars: &[Var], clip: Clip) -> Result<f64> {
    let mut squared = 0.0;
    for var in vars {
        if let Some(g) = grads.get(var) {
            squared += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = squared.sqrt();
    for var in vars {
        let Some(g) = grads.get(var) else { continue };
        let clipped = match clip {
            Clip::None => continue,
            Clip::Norm(max) if norm > max => (g * (max / (norm + 1e-6)))?,
            Clip::Norm(_) => continue,
            Clip::Value(max) => g.clamp(-max, max)?,
        };
        grads.insert(var, clipped);
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// One parameter p = [1, 1] with the loss g·p, so that ∂L/∂p = g.
    fn run(optimizer: Optimizer, g: [f64; 2], steps: usize) -> Vec<f64> {
        let p = Var::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
        let mut trainer = Trainer::new(optimizer, vec![p.clone()]).unwrap();
        let g = Tensor::new(&g, &Device::Cpu).unwrap();
        for _ in 0..steps {
            let grads = (p.as_tensor() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            trainer.step(&grads).unwrap();
        }
        p.as_tensor().to_vec1().unwrap()
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-7, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn adam_by_hand() {
        // With a constant gradient m̂ = g and v̂ = g² at every step, so each step moves
        // p by lr·sign(g) (up to ε): 1 − 2·0.1 = 0.8 and 1 + 0.2 = 1.2.
        close(
            &run(Optimizer::Adam { lr: 0.1 }, [1.0, -2.0], 2),
            &[0.8, 1.2],
        );
    }

    #[test]
    fn a_scaled_parameter_moves_by_its_share_of_the_rate() {
        // Two parameters with the same gradient under Adam at lr 0.1, the second at a
        // tenth of the rate: after 2 steps 1 − 0.2 = 0.8 and 1 − 0.02 = 0.98.
        let device = Device::Cpu;
        let (a, b) = (
            Var::new(&[1.0f64], &device).unwrap(),
            Var::new(&[1.0f64], &device).unwrap(),
        );
        let mut trainer =
            Trainer::new(Optimizer::Adam { lr: 0.1 }, vec![a.clone(), b.clone()]).unwrap();
        trainer.scale_lr(1, 0.1);
        for _ in 0..2 {
            let loss = (a.as_tensor() + b.as_tensor()).unwrap().sum_all().unwrap();
            trainer.step(&loss.backward().unwrap()).unwrap();
        }
        close(&a.as_tensor().to_vec1().unwrap(), &[0.8]);
        close(&b.as_tensor().to_vec1().unwrap(), &[0.98]);
    }

    #[test]
    fn rmsprop_by_hand() {
        // Step 1: v = 0.01·g², so the step is lr·g/(0.1·|g|) = 10·lr·sign(g) = 1.
        close(
            &run(Optimizer::Rmsprop { lr: 0.1 }, [1.0, -2.0], 1),
            &[0.0, 2.0],
        );
    }

    #[test]
    fn sgd_momentum_by_hand() {
        // Step 1: b = g, p −= 0.1·g; step 2: b = 0.9g + g = 1.9g, p −= 0.19·g.
        let p = run(
            Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.9,
            },
            [1.0, -2.0],
            2,
        );
        close(&p, &[1.0 - 0.29, 1.0 + 0.58]);
    }

    #[test]
    fn clipping_by_norm_and_value() {
        let p = Var::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
        let g = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let grads = || {
            (p.as_tensor() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let vars = [p.clone()];
        let mut store = grads();
        assert_eq!(
            clip_gradients(&mut store, &vars, Clip::Norm(1.0)).unwrap(),
            5.0
        );
        let clipped: Vec<f64> = store.get(&p).unwrap().to_vec1().unwrap();
        close(&clipped, &[3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)]);
        let mut store = grads();
        clip_gradients(&mut store, &vars, Clip::Norm(10.0)).unwrap();
        close(
            &store.get(&p).unwrap().to_vec1::<f64>().unwrap(),
            &[3.0, 4.0],
        );
        let mut store = grads();
        clip_gradients(&mut store, &vars, Clip::Value(3.5)).unwrap();
        close(
            &store.get(&p).unwrap().to_vec1::<f64>().unwrap(),
            &[3.0, 3.5],
        );
    }
}
