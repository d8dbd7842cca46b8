//! Command processing (decode, dispatch, respond through a real virtqueue) in commands per
//! second, and a 1920x1080 ARGB guest blob scattered over 4 KiB pages: udmabuf dmabuf creation
//! versus copying it once into a host memfd.
//!
//! `cargo bench -p crossway-virtio --bench device`

// Bench helpers: a failed unwrap is the report.
#![allow(clippy::unwrap_used)]
// The SKIP line for a missing /dev/udmabuf is part of the bench report.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use crossway_sys::memfd::Memfd;
use crossway_virtio::blob::{BlobExporter, ExportMode};
use crossway_virtio::context::NullContextFactory;
use crossway_virtio::device::{DeviceConfig, GpuDevice};
use crossway_virtio::fence::FenceSignaler;
use crossway_virtio::memory::{Backing, GuestMem};
use crossway_virtio::protocol::*;
use crossway_virtio::queue::process_queue;
use crossway_virtio::stats::DeviceStats;
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryAtomic};
use zerocopy::IntoBytes;

const MEM: usize = 64 << 20;
const BATCH: u16 = 128;

fn guest() -> GuestMem {
    let m = Memfd::new("bench-guest", MEM as u64).unwrap();
    let f = m.file().try_clone().unwrap();
    GuestMem::from_ranges_with_files([(GuestAddress(0), MEM, Some(FileOffset::new(f, 0)))]).unwrap()
}

fn device(mem: &GuestMem) -> GpuDevice {
    let cfg = DeviceConfig {
        export_mode: ExportMode::CopyOnly,
        ..DeviceConfig::default()
    };
    GpuDevice::new(
        cfg,
        Box::new(NullContextFactory),
        GuestMemoryAtomic::new(mem.clone()),
        FenceSignaler::new(None),
    )
    .unwrap()
}

fn hdr(t: u32) -> virtio_gpu_ctrl_hdr {
    virtio_gpu_ctrl_hdr {
        type_: t.into(),
        ..Default::default()
    }
}

/// The mix a console and a cross-domain client send most: flush, transfer, capset info,
/// cursor moves.
fn requests() -> Vec<Vec<u8>> {
    let mut flush = hdr(VIRTIO_GPU_CMD_RESOURCE_FLUSH).as_bytes().to_vec();
    flush.extend_from_slice(
        virtio_gpu_resource_flush {
            r: virtio_gpu_rect {
                x: 0.into(),
                y: 0.into(),
                width: 64.into(),
                height: 64.into(),
            },
            resource_id: 1.into(),
            padding: 0.into(),
        }
        .as_bytes(),
    );
    let mut xfer = hdr(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D).as_bytes().to_vec();
    xfer.extend_from_slice(
        virtio_gpu_transfer_to_host_2d {
            r: virtio_gpu_rect {
                x: 0.into(),
                y: 0.into(),
                width: 16.into(),
                height: 4.into(),
            },
            offset: 0.into(),
            resource_id: 1.into(),
            padding: 0.into(),
        }
        .as_bytes(),
    );
    let mut info = hdr(VIRTIO_GPU_CMD_GET_CAPSET_INFO).as_bytes().to_vec();
    info.extend_from_slice(
        virtio_gpu_get_capset_info {
            capset_index: 0.into(),
            padding: 0.into(),
        }
        .as_bytes(),
    );
    let mut cur = hdr(VIRTIO_GPU_CMD_MOVE_CURSOR).as_bytes().to_vec();
    cur.extend_from_slice(virtio_gpu_update_cursor::default().as_bytes());
    vec![flush, xfer, info, cur]
}

fn setup_resource(dev: &mut GpuDevice) {
    let mut c = hdr(VIRTIO_GPU_CMD_RESOURCE_CREATE_2D).as_bytes().to_vec();
    c.extend_from_slice(
        virtio_gpu_resource_create_2d {
            resource_id: 1.into(),
            format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM.into(),
            width: 64.into(),
            height: 64.into(),
        }
        .as_bytes(),
    );
    dev.process(&c);
    let mut a = hdr(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING)
        .as_bytes()
        .to_vec();
    a.extend_from_slice(
        virtio_gpu_resource_attach_backing {
            resource_id: 1.into(),
            nr_entries: 1.into(),
        }
        .as_bytes(),
    );
    a.extend_from_slice(
        virtio_gpu_mem_entry {
            addr: 0x200_0000u64.into(),
            length: 16384.into(),
            padding: 0.into(),
        }
        .as_bytes(),
    );
    dev.process(&a);
}

fn commands(c: &mut Criterion) {
    let mem = guest();
    let mut dev = device(&mem);
    setup_resource(&mut dev);
    let reqs = requests();
    let mut g = c.benchmark_group("commands");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("queue_decode_dispatch_respond", |b| {
        b.iter_batched(
            || {
                let mock = MockSplitQueue::new(&mem, 256);
                let mut descs = Vec::new();
                for i in 0..BATCH {
                    let r = &reqs[usize::from(i) % reqs.len()];
                    let (ra, wa) = (
                        0x10_0000 + u64::from(i) * 256,
                        0x20_0000 + u64::from(i) * 512,
                    );
                    mem.write_slice(r, GuestAddress(ra)).unwrap();
                    descs.push(RawDescriptor::from(SplitDescriptor::new(
                        ra,
                        r.len() as u32,
                        1,
                        2 * i + 1,
                    )));
                    descs.push(RawDescriptor::from(SplitDescriptor::new(wa, 512, 2, 0)));
                }
                mock.add_desc_chains(&descs, 0).unwrap();
                let q: Queue = mock.create_queue().unwrap();
                q
            },
            |mut q| process_queue(&mut dev, &mut q, &mem).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("device_process_only", |b| {
        b.iter(|| {
            for i in 0..usize::from(BATCH) {
                black_box(dev.process(&reqs[i % reqs.len()]));
            }
        })
    });
    g.finish();
    let s = dev.stats().snapshot();
    assert_eq!(s.errors, 0, "bench commands must succeed: {s:?}");
}

fn blob(c: &mut Criterion) {
    let mem = guest();
    let size: u64 = 1920 * 1080 * 4;
    let pages = size.div_ceil(4096);
    // Every other page, in reverse: no two entries adjacent, the worst case for udmabuf.
    let entries: Vec<virtio_gpu_mem_entry> = (0..pages)
        .map(|i| virtio_gpu_mem_entry {
            addr: (0x100_0000 + (pages - 1 - i) * 8192).into(),
            length: 4096.into(),
            padding: 0.into(),
        })
        .collect();
    let backing = Backing::new(&mem, &entries).unwrap();
    let bytes = pages * 4096;
    let mut g = c.benchmark_group("blob_1920x1080_argb_4k_pages");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function("resolve_scatter_list_to_memfd_ranges", |b| {
        b.iter(|| black_box(backing.fd_ranges(&mem, bytes).unwrap().len()))
    });
    let stats = Arc::new(DeviceStats::default());
    let mut copy = BlobExporter::new(ExportMode::CopyOnly, stats.clone());
    g.bench_function("copy_once_into_host_memfd", |b| {
        b.iter(|| black_box(copy.export(&mem, &backing, bytes).unwrap()))
    });
    if std::path::Path::new(crossway_virtio::udmabuf::UDMABUF_PATH).exists() {
        let mut zc = BlobExporter::new(ExportMode::Auto, stats.clone());
        g.bench_function("udmabuf_create_list", |b| {
            b.iter(|| black_box(zc.export(&mem, &backing, bytes).unwrap()))
        });
    } else {
        eprintln!(
            "SKIP udmabuf_create_list: /dev/udmabuf is missing on this host; only the copy \
             path was measured"
        );
    }
    g.finish();
}

criterion_group!(benches, commands, blob);
criterion_main!(benches);
