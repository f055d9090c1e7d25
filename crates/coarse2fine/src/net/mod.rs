//! Networks as data: a serialisable spec of layers plus a flat name → tensor weight map.

pub mod presets;
pub mod reference;
pub mod spec;
pub mod weights;

pub use spec::{
    BatchNorm, Conv, Dropout, Fc, InputShape, Layer, Lrn, NetSpec, Pool, Residual, Shape,
    TensorKind, Units,
};
pub use weights::{Tensor, WeightMap};
