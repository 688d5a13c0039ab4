//go:build tools

// Keeps helm in this module's requirements.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
