"""What server, client, trainer and chart tests share: wire contract, package format, registry, logs."""
