"""The CRI v1 gRPC surface: RuntimeService and ImageService over a unix socket."""
