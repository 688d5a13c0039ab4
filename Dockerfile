# The image: one static binary, CA certificates for HTTPS, a non-root user, nothing else.
#
# The binary is built outside the image (scripts/build-image), because the build machines reach
# no container registry to pull a builder image from:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu
# scripts/build-image puts it and the CA bundle into the build context and runs buildah.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY aliyun-acr-credential-helper /aliyun-acr-credential-helper
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 8080
ENTRYPOINT ["/aliyun-acr-credential-helper"]
