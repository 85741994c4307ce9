//! KVM usability probe. Having `/dev/kvm` is not enough: some hosts (nested or PVM
//! hypervisors) accept only special guest kernels and hang a normal one. The probe runs a
//! tiny real-mode guest (`mov al, 0x42; out 0x10, al; hlt`) and checks that KVM returns
//! with the expected port I/O exit. It runs in a child process (`kraal __kvm-probe`) that
//! is killed after a deadline, so detection can never hang the daemon.

use std::time::{Duration, Instant};

use kraal_sandbox::process::{Cmd, ProcessError};

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Outcome of [`probe`].
#[derive(Debug, Clone)]
pub struct KvmProbe {
    pub usable: bool,
    pub detail: String,
    pub elapsed: Duration,
}

/// Runs the probe in a child process with a deadline.
pub async fn probe() -> KvmProbe {
    let t0 = Instant::now();
    if !std::path::Path::new("/dev/kvm").exists() {
        return KvmProbe {
            usable: false,
            detail: "/dev/kvm does not exist".into(),
            elapsed: t0.elapsed(),
        };
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return KvmProbe {
                usable: false,
                detail: format!("cannot find own executable: {e}"),
                elapsed: t0.elapsed(),
            };
        }
    };
    let r = Cmd::new(exe)
        .arg("__kvm-probe")
        .timeout(PROBE_TIMEOUT)
        .run()
        .await;
    let (usable, detail) = match r {
        Ok(out) => (true, out.stdout_str().trim().to_owned()),
        Err(ProcessError::Timeout { .. }) => (
            false,
            format!(
                "/dev/kvm is present but a test guest did not finish within {} s (this host's KVM cannot run a normal guest)",
                PROBE_TIMEOUT.as_secs()
            ),
        ),
        Err(ProcessError::Failed { stderr, .. }) => (false, stderr.trim().to_owned()),
        Err(e) => (false, e.to_string()),
    };
    KvmProbe {
        usable,
        detail,
        elapsed: t0.elapsed(),
    }
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_EXIT_IO: u32 = 2;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

fn check(r: libc::c_int, what: &str) -> Result<libc::c_int, String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

/// Writes one `kvm_segment` (24 bytes) at `off` in a `kvm_sregs` buffer.
fn segment(sregs: &mut [u8; 312], off: usize, selector: u16, typ: u8, long: bool) {
    sregs[off..off + 8].copy_from_slice(&0u64.to_ne_bytes()); // base
    sregs[off + 8..off + 12].copy_from_slice(&0xffff_ffffu32.to_ne_bytes()); // limit
    sregs[off + 12..off + 14].copy_from_slice(&selector.to_ne_bytes());
    sregs[off + 14] = typ;
    sregs[off + 15] = 1; // present
    sregs[off + 16] = 0; // dpl
    sregs[off + 17] = u8::from(!long); // db
    sregs[off + 18] = 1; // s
    sregs[off + 19] = u8::from(long); // l
    sregs[off + 20] = 1; // g
    sregs[off + 22] = 0; // unusable
}

/// The body of `kraal __kvm-probe`: runs the test guest in this process.
///
/// The guest runs in 64-bit long mode with paging, as a real kernel does; a host whose
/// KVM only runs paravirtualized guests fails or stalls here, not only at kernel boot.
pub fn run_in_process() -> Result<String, String> {
    const MEM: usize = 0x20_0000;
    // SAFETY: plain ioctls on descriptors we own, with argument structs of the sizes the
    // kernel ABI defines (kvm_regs 144 bytes, kvm_sregs 312 bytes); the guest memory and
    // the vCPU run area are mappings we create and keep alive until the process exits.
    unsafe {
        let kvm = check(
            libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
            "open /dev/kvm",
        )?;
        let version = check(
            libc::ioctl(kvm, KVM_GET_API_VERSION, 0),
            "KVM_GET_API_VERSION",
        )?;
        if version != 12 {
            return Err(format!("unexpected KVM API version {version}"));
        }
        let vm = check(libc::ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM")?;
        let mem = libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return Err("mmap guest memory failed".into());
        }
        let m = mem.cast::<u8>();
        let put64 = |addr: usize, v: u64| std::ptr::write_unaligned(m.add(addr).cast::<u64>(), v);
        // Identity-map the first 2 MiB: PML4 at 0x2000 → PDPT at 0x3000 → PD at 0x4000 (2 MiB page).
        put64(0x2000, 0x3000 | 3);
        put64(0x3000, 0x4000 | 3);
        put64(0x4000, 0x83);
        let code: [u8; 5] = [0xB0, 0x42, 0xE6, 0x10, 0xF4]; // mov al,0x42; out 0x10,al; hlt
        std::ptr::copy_nonoverlapping(code.as_ptr(), m.add(0x1000), code.len());
        let region = MemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: mem as u64,
        };
        check(
            libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region),
            "KVM_SET_USER_MEMORY_REGION",
        )?;
        let vcpu = check(libc::ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU")?;
        let run_size = check(
            libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0),
            "KVM_GET_VCPU_MMAP_SIZE",
        )? as usize;
        let run = libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        );
        if run == libc::MAP_FAILED {
            return Err("mmap vcpu run area failed".into());
        }
        let mut sregs = [0u8; 312];
        check(
            libc::ioctl(vcpu, KVM_GET_SREGS, sregs.as_mut_ptr()),
            "KVM_GET_SREGS",
        )?;
        segment(&mut sregs, 0, 8, 11, true); // cs: 64-bit code
        for off in [24, 48, 72, 96, 120] {
            segment(&mut sregs, off, 16, 3, false); // ds es fs gs ss: data
        }
        let set = |sregs: &mut [u8; 312], off: usize, v: u64| {
            sregs[off..off + 8].copy_from_slice(&v.to_ne_bytes())
        };
        set(&mut sregs, 240, 0x2000); // cr3
        set(&mut sregs, 248, 1 << 5); // cr4: PAE
        set(&mut sregs, 224, 0x8005_0033); // cr0: PE MP ET NE WP AM PG
        set(&mut sregs, 264, 0x500); // efer: LME LMA
        check(
            libc::ioctl(vcpu, KVM_SET_SREGS, sregs.as_ptr()),
            "KVM_SET_SREGS",
        )?;
        let mut regs = [0u64; 18];
        regs[6] = 0x20_0000; // rsp
        regs[16] = 0x1000; // rip
        regs[17] = 0x2; // rflags
        check(
            libc::ioctl(vcpu, KVM_SET_REGS, regs.as_ptr()),
            "KVM_SET_REGS",
        )?;
        check(libc::ioctl(vcpu, KVM_RUN, 0), "KVM_RUN")?;
        let exit_reason = *(run.cast::<u8>().add(8).cast::<u32>());
        if exit_reason != KVM_EXIT_IO {
            return Err(format!(
                "a 64-bit test guest stopped with KVM exit reason {exit_reason}, expected port I/O; this host's KVM cannot run a normal guest"
            ));
        }
        let port = *(run.cast::<u8>().add(32 + 2).cast::<u16>());
        if port != 0x10 {
            return Err(format!("test guest wrote to port {port:#x}, expected 0x10"));
        }
        Ok(format!(
            "KVM API {version}: a 64-bit test guest ran (booting a full guest kernel is checked by the VM backends)"
        ))
    }
}
