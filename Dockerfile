# syntax=docker/dockerfile:1
# pgmux: a static binary on a distroless base, run as a non-root user.
#   docker build -t pgmux .
#   docker run -v $PWD/pgmux.yaml:/etc/pgmux/pgmux.yaml -p 6432:6432 pgmux
# Every configuration key can also come from the environment (PGMUX_<KEY>).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pgmux ./cmd/pgmux

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgmux /usr/local/bin/pgmux
USER 65532:65532
EXPOSE 6432 9127
ENTRYPOINT ["/usr/local/bin/pgmux"]
CMD ["--config", "/etc/pgmux/pgmux.yaml"]
