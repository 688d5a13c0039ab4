//go:build tools

// Keeps the binaries this module builds in its requirements: containerd, its runc shim and ctr,
// for the local cluster's node (../build.sh). A module of its own, so containerd's dependencies
// resolve exactly as containerd pins them, untouched by Kubernetes' or runc's.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
