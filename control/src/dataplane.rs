//! Loading, pinning and reading the XDP dataplane.
