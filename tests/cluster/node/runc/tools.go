//go:build tools

// Keeps runc, the OCI runtime the local cluster's node runs containers with (../build.sh), in this
// module's requirements. A module of its own, so runc's dependencies resolve exactly as runc pins
// them. Debian's runc (1.1) is too old for containerd 2.4; see ../node.sh.
package tools

import (
	_ "github.com/opencontainers/runc"
)
