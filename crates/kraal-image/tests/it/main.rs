//! Integration tests of the image store that reach outside the process: the microVM
//! kernel downloaded from Debian and its initramfs.

mod kernel;
