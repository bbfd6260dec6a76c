// Slim CoreDNS for the CI cluster: only the plugins the Corefile in
// ci/cluster/manifests/coredns.yaml uses (no forward/loop: pods never reach an upstream).
// Importing only these instead of core/plugin cuts the AWS/Azure/GCP/... dependency graph
// and most of the compile time.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// Same relative order as upstream core/dnsserver/zdirectives.go.
	dnsserver.Directives = []string{
		"reload", "ready", "health", "prometheus", "errors", "log",
		"loadbalance", "cache", "kubernetes",
	}
}

func main() { coremain.Run() }
