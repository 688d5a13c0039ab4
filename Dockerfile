# The image: one static binary, CA certificates for HTTPS, its SBOM, a non-root user, nothing else.
#
# The binary is built outside the image (scripts/build-image), because the build machines reach
# no container registry to pull a builder image from:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu
#   (or --target aarch64-unknown-linux-gnu, cross-linked: scripts/build-release --target ...)
# scripts/build-image puts it, the CA bundle and sbom/ into the build context and runs buildah
# (buildah build --platform linux/amd64 or linux/arm64: nothing here runs, so no emulation).
# sbom/ holds aliyun-acr-credential-helper.cdx.json, the CycloneDX SBOM of the binary's Rust
# dependencies, in the release images (scripts/build-image --multi-arch); it is empty in the
# developer image (scripts/build-image without --multi-arch).
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY sbom/ /sbom/
COPY aliyun-acr-credential-helper /aliyun-acr-credential-helper
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 8080
ENTRYPOINT ["/aliyun-acr-credential-helper"]
