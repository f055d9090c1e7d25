//! The networks of the paper's Table I, and the original AlexNet, as specs.
//!
//! Table I lists, per network, the filters (kernel) of conv layers L1–L3, the pooling
//! window/stride after L1 and L2 (`P3/2` = 3×3 window, stride 2), and the units of fully
//! connected layers L6 and L8. How we complete it (see docs/networks.md):
//!
//! * Fractional kernels (0.3, 0.7, 1.3) are rounded to the nearest size ≥ 1, i.e. 1.
//! * `P0/0`, `P1/0` and `P1/1` are a 1×1 window, the identity, so no pooling layer is made.
//! * The column names L6 and L8 imply AlexNet's L4, L5 and L7 exist in the scaled AlexNets;
//!   they are scaled like their neighbours (conv4 = conv3's filters, conv5 = conv2's,
//!   fc7 = fc6's). AlexNet's pool5 is left out of the scaled nets, whose maps are already tiny.
//! * Convolutions after the first are padded to keep their input size where the kernel is
//!   odd (as AlexNet's are); conv1 is unpadded with stride 1 (AlexNet's stride 4 would
//!   leave nothing of an 8×8 image).
//! * AlexNet-family nets keep LRN after conv1 and conv2 and dropout 0.5 after fc6 and fc7;
//!   net-1…net-4, which the table gives as plain conv–pool–fc nets, have neither.
//! * The classifier L8 has as many outputs as the data set has classes.
//! * Max pooling rounds down (PyTorch's convention); set `ceil_mode` for Caffe's.
//!
//! Three presets are not the paper's: `bn-cnn`, a small net of today's layers (batch norms,
//! an average pool, a global average pool before the classifier), whose weights fit every
//! input size; and the CIFAR ResNets of He et al. (2016, Section 4.2), `resnet-20` and
//! its shallow sibling `resnet-8`: a 3×3 convolution of 16 filters, three stages of basic
//! blocks (two 3×3 convolutions with batch norms) of 16, 32 and 64 filters, the first block
//! of the second and third stage halving the side, then a global average pool and the
//! classifier. Where a block changes the shape its shortcut is a projection, a strided 1×1
//! convolution and a batch norm (the paper's option B); its convolutions keep a bias,
//! which the batch norm after each makes redundant but harmless.

use super::spec::{BatchNorm, Conv, Dropout, Fc, Layer, Lrn, NetSpec, Pool, Residual, Units};

/// A named preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// The input side it was designed for.
    pub native_size: usize,
    /// One-line description.
    pub about: &'static str,
}

/// All presets, smallest first.
pub const PRESETS: [Preset; 11] = [
    Preset {
        name: "net-1",
        native_size: 8,
        about: "Table I net-1: conv 3(2), fc 128",
    },
    Preset {
        name: "net-2",
        native_size: 8,
        about: "Table I net-2: conv 6(2), fc 256",
    },
    Preset {
        name: "net-3",
        native_size: 8,
        about: "Table I net-3: conv 12(2), fc 512",
    },
    Preset {
        name: "net-4",
        native_size: 8,
        about: "Table I net-4: conv 6(2) P2/1, conv 16(3) P3/2, fc 256",
    },
    Preset {
        name: "alexnet-s5",
        native_size: 8,
        about: "AlexNet scaled by 2^5 (8×8)",
    },
    Preset {
        name: "alexnet-s4",
        native_size: 16,
        about: "AlexNet scaled by 2^4 (16×16)",
    },
    Preset {
        name: "alexnet-s3",
        native_size: 32,
        about: "AlexNet scaled by 2^3 (32×32)",
    },
    Preset {
        name: "alexnet",
        native_size: 227,
        about: "Krizhevsky et al.'s AlexNet (227×227, no groups)",
    },
    Preset {
        name: "bn-cnn",
        native_size: 8,
        about: "conv 16(3)-BN, conv 32(3)-BN, avg-pool 2/2, conv 64(3)-BN, global avg-pool, fc (any size)",
    },
    Preset {
        name: "resnet-8",
        native_size: 8,
        about: "CIFAR ResNet, 1 basic block per stage (16, 32, 64 filters), global avg-pool (any size)",
    },
    Preset {
        name: "resnet-20",
        native_size: 32,
        about: "CIFAR ResNet-20: 3 basic blocks per stage (16, 32, 64 filters), global avg-pool (any size)",
    },
];

fn conv(name: &str, filters: usize, kernel: usize, stride: usize, padding: usize) -> Layer {
    Layer::Conv(Conv {
        name: name.into(),
        filters,
        kernel,
        stride,
        padding,
        dilation: 1,
    })
}

fn pool(kernel: usize, stride: usize) -> Layer {
    Layer::MaxPool(Pool {
        kernel,
        stride: Some(stride),
        padding: 0,
        dilation: 1,
        ceil_mode: false,
    })
}

fn fc(name: &str, outputs: usize) -> Layer {
    Layer::Fc(Fc {
        name: name.into(),
        outputs: Units::Fixed(outputs),
    })
}

fn classifier() -> Layer {
    Layer::Fc(Fc {
        name: "fc8".into(),
        outputs: Units::Classes,
    })
}

fn lrn() -> Layer {
    Layer::Lrn(Lrn::default())
}

fn dropout() -> Layer {
    Layer::Dropout(Dropout { p: 0.5 })
}

/// Three 3×3 convolutions, each followed by a batch norm and a ReLU, an average pool after
/// the second, and a global average pool before the classifier.
fn bn_cnn() -> Vec<Layer> {
    let block = |i: usize, filters| {
        [
            conv(&format!("conv{i}"), filters, 3, 1, 1),
            Layer::BatchNorm(BatchNorm::new(&format!("bn{i}"))),
            Layer::Relu,
        ]
    };
    let mut layers = Vec::new();
    layers.extend(block(1, 16));
    layers.extend(block(2, 32));
    layers.push(Layer::AvgPool(Pool {
        kernel: 2,
        stride: Some(2),
        padding: 0,
        dilation: 1,
        ceil_mode: false,
    }));
    layers.extend(block(3, 64));
    layers.extend([Layer::GlobalAvgPool, classifier(), Layer::Softmax]);
    layers
}

/// A CIFAR ResNet of `blocks` basic blocks per stage (ResNet-`6·blocks + 2`).
fn cifar_resnet(blocks: usize) -> Vec<Layer> {
    let bn = |name: String| Layer::BatchNorm(BatchNorm::new(&name));
    let mut layers = vec![conv("conv1", 16, 3, 1, 1), bn("bn1".into()), Layer::Relu];
    let mut channels = 16;
    for (stage, filters) in [16, 32, 64].into_iter().enumerate() {
        for b in 1..=blocks {
            let at = format!("s{}b{b}", stage + 1);
            let stride = if stage > 0 && b == 1 { 2 } else { 1 };
            let body = vec![
                conv(&format!("{at}_conv1"), filters, 3, stride, 1),
                bn(format!("{at}_bn1")),
                Layer::Relu,
                conv(&format!("{at}_conv2"), filters, 3, 1, 1),
                bn(format!("{at}_bn2")),
            ];
            let shortcut = if stride != 1 || filters != channels {
                vec![
                    conv(&format!("{at}_proj"), filters, 1, stride, 0),
                    bn(format!("{at}_proj_bn")),
                ]
            } else {
                Vec::new()
            };
            layers.extend([Layer::Residual(Residual { body, shortcut }), Layer::Relu]);
            channels = filters;
        }
    }
    layers.extend([Layer::GlobalAvgPool, classifier(), Layer::Softmax]);
    layers
}

fn small_net(filters: usize, fc6: usize) -> Vec<Layer> {
    vec![
        conv("conv1", filters, 2, 1, 0),
        Layer::Relu,
        fc("fc6", fc6),
        Layer::Relu,
        classifier(),
        Layer::Softmax,
    ]
}

/// Filters of conv1–conv5, pool after conv1 and conv2 (window, stride; `None` = identity),
/// conv1/conv2 kernels, fc6/fc7 units.
struct AlexShape {
    filters: [usize; 5],
    kernels: [usize; 2],
    pools: [Option<(usize, usize)>; 2],
    fc: usize,
}

fn alexnet_like(s: AlexShape, original: bool) -> Vec<Layer> {
    let mut v = Vec::new();
    let (k1, k2) = (s.kernels[0], s.kernels[1]);
    if original {
        v.push(conv("conv1", s.filters[0], k1, 4, 0));
    } else {
        v.push(conv("conv1", s.filters[0], k1, 1, 0));
    }
    v.extend([Layer::Relu, lrn()]);
    if let Some((k, st)) = s.pools[0] {
        v.push(pool(k, st));
    }
    v.extend([
        conv("conv2", s.filters[1], k2, 1, k2 / 2),
        Layer::Relu,
        lrn(),
    ]);
    if let Some((k, st)) = s.pools[1] {
        v.push(pool(k, st));
    }
    v.extend([
        conv("conv3", s.filters[2], 3, 1, 1),
        Layer::Relu,
        conv("conv4", s.filters[3], 3, 1, 1),
        Layer::Relu,
        conv("conv5", s.filters[4], 3, 1, 1),
        Layer::Relu,
    ]);
    if original {
        v.push(pool(3, 2));
    }
    v.extend([
        fc("fc6", s.fc),
        Layer::Relu,
        dropout(),
        fc("fc7", s.fc),
        Layer::Relu,
        dropout(),
        classifier(),
        Layer::Softmax,
    ]);
    v
}

/// The spec of preset `name` (unbound: input and classes come from the data).
/// A network by preset name, or from a `.toml`/`.json` spec file.
pub fn resolve(name: &str) -> crate::error::Result<NetSpec> {
    if let Some(spec) = preset(name) {
        return Ok(spec);
    }
    let path = std::path::Path::new(name);
    if path.extension().is_some_and(|e| e == "toml" || e == "json") {
        return NetSpec::load(path);
    }
    Err(crate::error::Error::invalid(format!(
        "unknown network {name:?}: not a preset ({}) nor a .toml/.json spec file",
        preset_names().join(", ")
    )))
}

/// The preset named `name`.
pub fn preset(name: &str) -> Option<NetSpec> {
    let layers = match name {
        "net-1" => small_net(3, 128),
        "net-2" => small_net(6, 256),
        "net-3" => small_net(12, 512),
        "net-4" => vec![
            conv("conv1", 6, 2, 1, 0),
            Layer::Relu,
            pool(2, 1),
            conv("conv2", 16, 3, 1, 1),
            Layer::Relu,
            pool(3, 2),
            fc("fc6", 256),
            Layer::Relu,
            classifier(),
            Layer::Softmax,
        ],
        "alexnet-s5" => alexnet_like(
            AlexShape {
                filters: [3, 8, 12, 12, 8],
                kernels: [1, 1],
                pools: [None, None],
                fc: 128,
            },
            false,
        ),
        "alexnet-s4" => alexnet_like(
            AlexShape {
                filters: [6, 16, 24, 24, 16],
                kernels: [1, 3],
                pools: [None, Some((2, 1))],
                fc: 256,
            },
            false,
        ),
        "alexnet-s3" => alexnet_like(
            AlexShape {
                filters: [12, 32, 48, 48, 32],
                kernels: [1, 4],
                pools: [Some((2, 1)), Some((3, 2))],
                fc: 512,
            },
            false,
        ),
        "alexnet" => alexnet_like(
            AlexShape {
                filters: [96, 256, 384, 384, 256],
                kernels: [11, 5],
                pools: [Some((3, 2)), Some((3, 2))],
                fc: 4096,
            },
            true,
        ),
        "bn-cnn" => bn_cnn(),
        "resnet-8" => cifar_resnet(1),
        "resnet-20" => cifar_resnet(3),
        _ => return None,
    };
    Some(NetSpec {
        name: name.into(),
        input: None,
        classes: None,
        layers,
    })
}

/// Names of all presets, for error messages.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::spec::InputShape;

    #[test]
    fn every_preset_binds_at_its_native_size() -> crate::error::Result<()> {
        for p in PRESETS {
            let spec = preset(p.name).expect("listed preset exists");
            spec.check_structure()?;
            let bound = spec.bind(InputShape::square(3, p.native_size), 1000)?;
            assert!(bound.num_params()? > 0);
        }
        Ok(())
    }

    #[test]
    fn original_alexnet_has_the_published_shapes() -> crate::error::Result<()> {
        let spec = preset("alexnet")
            .expect("alexnet preset")
            .bind(InputShape::square(3, 227), 1000)?;
        let shapes = spec.param_shapes()?;
        let find = |n: &str| shapes.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
        assert_eq!(find("conv1.weight"), Some(vec![96, 3, 11, 11]));
        assert_eq!(find("fc6.weight"), Some(vec![4096, 256 * 6 * 6]));
        assert_eq!(find("fc8.weight"), Some(vec![1000, 4096]));
        Ok(())
    }

    /// He et al.'s ResNet-20: 19 convolutions and the classifier, 0.27 M parameters
    /// (their Table 6), maps 32², 16² and 8² in the three stages.
    #[test]
    fn resnet_20_has_the_published_shapes() -> crate::error::Result<()> {
        let spec = preset("resnet-20")
            .expect("resnet-20")
            .bind(InputShape::square(3, 32), 10)?;
        let tensors = spec.tensors()?;
        let convs = tensors
            .iter()
            .filter(|(n, s, _)| s.len() == 4 && !n.ends_with("proj.weight"))
            .count();
        assert_eq!(convs, 19);
        let params = spec.num_params()?;
        assert!((270_000..280_000).contains(&params), "{params}");
        let rows = spec.summary()?;
        let sides: Vec<String> = rows.iter().map(|r| r.output.to_string()).collect();
        assert_eq!(sides[3], "16×32×32");
        assert_eq!(sides[9], "32×16×16");
        assert_eq!(sides[15], "64×8×8");
        Ok(())
    }

    #[test]
    fn net2_at_8x8() -> crate::error::Result<()> {
        let spec = preset("net-2")
            .expect("net-2")
            .bind(InputShape::square(3, 8), 1000)?;
        let shapes = spec.param_shapes()?;
        assert_eq!(shapes[0].1, vec![6, 3, 2, 2]);
        assert_eq!(shapes[2].1, vec![256, 6 * 7 * 7]);
        Ok(())
    }
}
