//! Named, trainable parameters with PyTorch's names.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Result, Tensor, Var, bail};

use crate::backend::Backend;

/// The trainable parameters of a model, by PyTorch name (`weight_ih_l0`, `head.bias`, …).
///
/// Ordered by name, so iterating (for an optimiser, a checkpoint, a parameter count) is
/// the same on every run. Cells hold clones of the tensors inside the [`Var`]s, so an
/// optimiser that updates the `Var`s updates the cells built from them.
#[derive(Debug, Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
    backend: Backend,
}

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps plain tensors (for example a PyTorch `state_dict` loaded from safetensors).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut params = Self::new();
        for (name, tensor) in tensors {
            params.insert(name, Var::from_tensor(tensor)?);
        }
        Ok(params)
    }

    /// Where the fused kernels of the layers built from these parameters run (the CPU
    /// unless [`Params::set_backend`] says otherwise).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Runs the fused kernels of the layers built from now on on `backend`.
    pub fn set_backend(&mut self, backend: Backend) {
        self.backend = backend;
    }

    /// Adds or replaces a parameter.
    pub fn insert(&mut self, name: &str, var: Var) {
        self.vars.insert(name.to_owned(), var);
    }

    /// The parameter `name`, or an error that names it.
    pub fn get(&self, name: &str) -> Result<&Var> {
        match self.vars.get(name) {
            Some(var) => Ok(var),
            None => bail!("missing parameter `{name}`"),
        }
    }

    /// Whether a parameter of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// The parameter `name` as a tensor whose shape must be `dims`.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let tensor = self.get(name)?.as_tensor();
        if tensor.dims() != dims {
            bail!(
                "parameter `{name}` has shape {:?}, expected {dims:?}",
                tensor.dims()
            );
        }
        Ok(tensor.clone())
    }

    /// `(name, var)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(name, var)| (name.as_str(), var))
    }

    /// The number of scalars over all parameters.
    pub fn element_count(&self) -> usize {
        self.vars.values().map(|var| var.elem_count()).sum()
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Copies of the current values, e.g. for `candle_core::safetensors::save`.
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect()
    }

    /// The same parameters as new `Var`s of `dtype` on `device`.
    pub fn cast(&self, dtype: DType, device: &Device) -> Result<Self> {
        let mut params = Self::new();
        for (name, var) in self.iter() {
            let tensor = var.as_tensor().to_dtype(dtype)?.to_device(device)?;
            params.insert(name, Var::from_tensor(&tensor)?);
        }
        Ok(params)
    }

    /// The common dtype and device of the parameters (f32 on CPU when there are none).
    pub fn dtype_device(&self) -> (DType, Device) {
        self.vars
            .values()
            .next()
            .map_or((DType::F32, Device::Cpu), |var| {
                (var.dtype(), var.device().clone())
            })
    }
}
