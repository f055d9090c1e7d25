//! Flat name → tensor weight maps, stored as safetensors (`f32`, row-major, PyTorch's
//! layouts: conv `out × in × kh × kw`, fully connected `out × in`), so a checkpoint's
//! weights load directly into a PyTorch `state_dict`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::spec::{NetSpec, Param, TensorKind};
use crate::error::{Error, Result};
use crate::fsutil;

/// A dense `f32` tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// How fresh weights are drawn. Biases always start at zero.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// He et al.: N(0, 2 / fan_in), suited to ReLU nets.
    Kaiming,
    /// Glorot: N(0, 2 / (fan_in + fan_out)).
    Xavier,
    /// N(0, σ²), Caffe's `gaussian` filler.
    Gaussian(f32),
}

impl std::str::FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kaiming" => Ok(Init::Kaiming),
            "xavier" => Ok(Init::Xavier),
            _ => s
                .strip_prefix("gauss:")
                .and_then(|v| v.parse::<f32>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Init::Gaussian)
                .ok_or_else(|| {
                    Error::invalid(format!("init {s:?}: use kaiming, xavier or gauss:SIGMA"))
                }),
        }
    }
}

/// All tensors of a network, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightMap {
    tensors: BTreeMap<String, Tensor>,
}

impl WeightMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh weights for a bound spec, drawn with `seed`.
    pub fn init(spec: &NetSpec, init: Init, seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut map = Self::new();
        for (name, shape, kind) in spec.tensors()? {
            let mut t = Tensor::zeros(&shape);
            // A batch norm starts as the identity on unit-variance input: γ = 1, and a
            // running variance of 1.
            if kind == TensorKind::Scale || Param::of(&name) == Some(Param::RunningVar) {
                t.data.fill(1.0);
            }
            if kind == TensorKind::Weight {
                let fan_in: usize = shape[1..].iter().product();
                let fan_out = shape[0] * shape[2..].iter().product::<usize>();
                let std = match init {
                    Init::Kaiming => (2.0 / fan_in as f64).sqrt() as f32,
                    Init::Xavier => (2.0 / (fan_in + fan_out) as f64).sqrt() as f32,
                    Init::Gaussian(s) => s,
                };
                if std > 0.0 {
                    let normal = Normal::new(0.0f32, std)
                        .map_err(|e| Error::invalid(format!("init σ {std}: {e}")))?;
                    t.data.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
                }
            }
            map.insert(name, t);
        }
        Ok(map)
    }

    /// Zeros with the tensor shapes of a bound spec (e.g. fresh momentum buffers).
    pub fn zeros_for(spec: &NetSpec) -> Result<Self> {
        let mut map = Self::new();
        for (name, shape) in spec.param_shapes()? {
            map.insert(name, Tensor::zeros(&shape));
        }
        Ok(map)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Mutable access to the tensor called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True if there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of values.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(Tensor::numel).sum()
    }

    /// Checks that the map has exactly the tensors of `spec` with the right shapes;
    /// `origin` names the file in errors.
    pub fn check_against(&self, spec: &NetSpec, origin: &Path) -> Result<()> {
        let want = spec.param_shapes()?;
        for (name, shape) in &want {
            match self.get(name) {
                None => return Err(Error::format(origin, format!("missing tensor {name:?}"))),
                Some(t) if &t.shape != shape => {
                    return Err(Error::format(
                        origin,
                        format!(
                            "tensor {name:?} has shape {:?}, net {:?} needs {shape:?}",
                            t.shape, spec.name
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !want.iter().any(|(n, _)| n == *k))
        {
            return Err(Error::format(
                origin,
                format!("tensor {extra:?} is not part of net {:?}", spec.name),
            ));
        }
        Ok(())
    }

    /// Saves as safetensors (atomically), with optional string metadata.
    pub fn save(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    t.shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::format(path, format!("tensor {n:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let buf = safetensors::serialize(views, metadata)
            .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
        fsutil::write_bytes_atomic(path, &buf)
    }

    /// Loads a safetensors file of `f32` tensors.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Reads safetensors bytes of `f32` tensors; `path` names them in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let mut map = Self::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name:?} has dtype {:?}, only F32 is supported",
                        view.dtype()
                    ),
                ));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            map.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::presets::preset;
    use crate::net::spec::InputShape;

    fn net2() -> NetSpec {
        preset("net-2")
            .and_then(|s| s.bind(InputShape::square(1, 8), 10).ok())
            .expect("net-2 binds at 8×8")
    }

    #[test]
    fn safetensors_round_trip_and_checks() -> Result<()> {
        let spec = net2();
        let w = WeightMap::init(&spec, Init::Kaiming, 1)?;
        assert_eq!(
            w,
            WeightMap::init(&spec, Init::Kaiming, 1)?,
            "same seed, same weights"
        );
        assert_ne!(w, WeightMap::init(&spec, Init::Kaiming, 2)?);
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = dir.path().join("w.safetensors");
        w.save(&p, None)?;
        let back = WeightMap::load(&p)?;
        assert_eq!(back, w);
        back.check_against(&spec, &p)?;

        let mut missing = back.clone();
        missing.remove("fc6.bias");
        let e = missing.check_against(&spec, &p).unwrap_err().to_string();
        assert!(
            e.contains("w.safetensors") && e.contains("missing tensor \"fc6.bias\""),
            "{e}"
        );

        let mut wrong = back;
        wrong.insert("conv1.weight", Tensor::zeros(&[6, 1, 3, 3]));
        assert!(
            wrong
                .check_against(&spec, &p)
                .unwrap_err()
                .to_string()
                .contains("shape")
        );

        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        std::fs::write(&p, &bytes[..bytes.len() / 2]).map_err(|e| Error::io(&p, e))?;
        assert!(
            WeightMap::load(&p)
                .unwrap_err()
                .to_string()
                .contains("not a valid safetensors")
        );
        Ok(())
    }

    #[test]
    fn kaiming_scale_is_right() -> Result<()> {
        let spec = net2();
        let w = WeightMap::init(&spec, Init::Kaiming, 0)?;
        let fc = w.get("fc6.weight").expect("fc6");
        let var = fc.data.iter().map(|v| v * v).sum::<f32>() / fc.numel() as f32;
        let want = 2.0 / (6.0 * 49.0);
        assert!(
            (var / want - 1.0).abs() < 0.05,
            "variance {var}, want {want}"
        );
        assert!(
            w.get("fc6.bias")
                .expect("bias")
                .data
                .iter()
                .all(|&b| b == 0.0)
        );
        Ok(())
    }
}
