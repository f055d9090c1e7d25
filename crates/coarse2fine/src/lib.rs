//! coarse2fine: incremental, coarse-to-fine training of convolutional networks.
//!
//! Train a tiny network on images downscaled to 8×8, grow its learned weights into a
//! larger network for 16×16, 32×32 … images, and keep training (Liu et al., *Incremental
//! Convolutional Neural Network Training*). This crate holds the data pipeline
//! ([`data`]), networks as data ([`net`]), the training loop ([`train`]) and checkpoints;
//! the deep-learning framework is confined to [`backend`].

#[cfg(feature = "training")]
pub mod backend;
pub mod checkpoint;
pub mod clock;
pub mod data;
pub mod error;
pub mod events;
pub mod export;
pub mod fsutil;
pub mod grow;
#[cfg(feature = "training")]
pub mod handoff;
pub mod hyper;
pub mod lr;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod progress;
#[cfg(feature = "training")]
pub mod report;
pub mod resources;
#[cfg(feature = "training")]
pub mod run;
#[cfg(feature = "training")]
pub mod train;

pub use error::{Error, Result};
