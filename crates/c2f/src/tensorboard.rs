//! TensorBoard event files from a report's curves (cargo feature `tensorboard`).
//!
//! An event file is a sequence of TFRecords, each `len: u64 LE`, `masked crc32c(len)`,
//! the serialised `Event` protobuf, `masked crc32c(event)`. Only the fields TensorBoard's
//! scalar dashboard reads are written: `Event { wall_time = 1, step = 2, file_version = 3,
//! summary = 5 }`, `Summary { value = 1 }`, `Summary.Value { tag = 1, simple_value = 2 }`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coarse2fine::events::What;
use coarse2fine::fsutil;
use coarse2fine::report::Curve;
use protobuf::CodedOutputStream;

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(out: &mut Vec<u8>, event: &[u8]) {
    let len = (event.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(event);
    out.extend_from_slice(&masked_crc(event).to_le_bytes());
}

fn event(
    wall_time: f64,
    step: i64,
    body: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        os.write_double(1, wall_time)?;
        os.write_int64(2, step)?;
        body(&mut os)?;
        os.flush()?;
    }
    Ok(buf)
}

fn scalars(values: &[(&str, f64)]) -> Result<Vec<u8>> {
    let mut summary = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut summary);
        for (tag, v) in values {
            let mut value = Vec::new();
            {
                let mut vs = CodedOutputStream::vec(&mut value);
                vs.write_string(1, tag)?;
                vs.write_float(2, *v as f32)?;
                vs.flush()?;
            }
            os.write_bytes(1, &value)?;
        }
        os.flush()?;
    }
    Ok(summary)
}

/// Wall-clock seconds, step and the scalars logged there.
type Point<'a> = (f64, i64, Vec<(&'a str, f64)>);

/// Writes one event file per curve under `dir/<run>/<curve>/`; the step is the number of
/// training images seen, the wall time the curve's clock after `start` (Unix seconds).
/// Returns the files written.
pub fn write(dir: &Path, curves: &[Curve], start: f64) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for c in curves {
        let sub = dir.join(c.run.replace('/', "_")).join(c.kind.name());
        std::fs::create_dir_all(&sub).with_context(|| sub.display().to_string())?;
        let mut out = Vec::new();
        record(
            &mut out,
            &event(start, 0, |os| os.write_string(3, "brain.Event:2"))?,
        );
        let mut points: Vec<Point> = Vec::new();
        for p in c.evals.iter().chain(&c.trains) {
            let values = match p.what {
                What::Eval {
                    top1, top5, loss, ..
                } => vec![
                    ("test/top1", top1),
                    ("test/top5", top5),
                    ("test/loss", loss),
                    ("time/training_s", p.clock.time_s),
                ],
                What::Train { loss, .. } => vec![("train/loss", loss)],
                _ => continue,
            };
            points.push((p.clock.wall_s, p.images as i64, values));
        }
        points.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)));
        for (wall, step, values) in points {
            let summary = scalars(&values)?;
            record(
                &mut out,
                &event(start + wall, step, |os| os.write_bytes(5, &summary))?,
            );
        }
        let path = sub.join(format!("events.out.tfevents.{}.c2f", start as u64));
        fsutil::write_bytes_atomic(&path, &out)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720); TensorFlow's mask,
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, makes it 0xC78AB0E5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }
}
