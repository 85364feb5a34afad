//! The Hypervisor.framework backend for Apple Silicon. A later change fills it in; until then
//! uhyve builds on macOS but cannot start a VM there.
