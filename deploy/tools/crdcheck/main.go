// crdcheck validates the Prometheus Operator custom resources in deploy/k8s (PodMonitor,
// ServiceMonitor, PrometheusRule) against the operator's own Go API types: the YAML is decoded
// strictly, so an unknown or misspelt field, or a value of the wrong type, is an error. This is
// the same decoding the Kubernetes API server applies through the CRD schemas generated from
// these types. Run by scripts/ops-test:
//
//	go run ./deploy/tools/crdcheck deploy/k8s/*.yaml
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	failed, checked := 0, 0
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("  FAIL  %s: %v\n", path, err)
			failed++
			continue
		}
		for i, doc := range splitDocuments(data) {
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil || meta.APIVersion != "monitoring.coreos.com/v1" {
				continue
			}
			var target interface{}
			switch meta.Kind {
			case "PodMonitor":
				target = &monitoringv1.PodMonitor{}
			case "ServiceMonitor":
				target = &monitoringv1.ServiceMonitor{}
			case "PrometheusRule":
				target = &monitoringv1.PrometheusRule{}
			default:
				fmt.Printf("  FAIL  %s#%d: kind %s is not checked by crdcheck\n", path, i, meta.Kind)
				failed++
				continue
			}
			checked++
			if err := yaml.UnmarshalStrict(doc, target); err != nil {
				fmt.Printf("  FAIL  %s#%d %s: %v\n", path, i, meta.Kind, err)
				failed++
				continue
			}
			fmt.Printf("  ok    %s#%d %s decodes strictly into monitoring.coreos.com/v1 %s\n", path, i, meta.Kind, meta.Kind)
		}
	}
	if checked == 0 {
		fmt.Println("  FAIL  no monitoring.coreos.com/v1 resources found")
		failed++
	}
	if failed > 0 {
		fmt.Printf("crdcheck: %d problem(s)\n", failed)
		os.Exit(1)
	}
	fmt.Println("crdcheck: ok")
}

// splitDocuments splits a multi-document YAML file on lines that are exactly "---".
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---")) {
		if strings.TrimSpace(string(d)) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}
