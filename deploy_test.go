package pgmux_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pgmux/pgmux/config"
)

// TestKubernetesManifests parses deploy/kubernetes as Kubernetes objects
// (unknown fields are errors), loads the pgmux configuration they carry, and
// checks that pgmux is a native sidecar, with probes, a drain hook and a
// grace period longer than its drain.
func TestKubernetesManifests(t *testing.T) {
	deployments, configs, _ := readManifest(t, "deploy/kubernetes/sidecar.yaml")
	if len(deployments) != 1 || len(configs) != 1 {
		t.Fatalf("want one Deployment and one ConfigMap, got %d and %d", len(deployments), len(configs))
	}
	cfg := loadConfigMap(t, configs[0])
	spec := deployments[0].Spec.Template.Spec
	for _, c := range spec.Containers {
		if c.Name == "pgmux" {
			t.Fatal("pgmux is an ordinary container: it would stop while the app still needs it")
		}
	}
	// A native sidecar: an init container that keeps running, started before
	// the app and stopped after it.
	var pgmux *corev1.Container
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == "pgmux" {
			pgmux = &spec.InitContainers[i]
		}
	}
	if pgmux == nil {
		t.Fatal("no pgmux init container")
	}
	if p := pgmux.RestartPolicy; p == nil || *p != corev1.ContainerRestartPolicyAlways {
		t.Fatal("the pgmux init container lacks restartPolicy: Always (a native sidecar)")
	}
	cmd := func(h *corev1.ProbeHandler) string {
		if h == nil || h.Exec == nil {
			return ""
		}
		return strings.Join(h.Exec.Command, " ")
	}
	if p := pgmux.ReadinessProbe; p == nil || !strings.HasSuffix(cmd(&p.ProbeHandler), "/readyz") {
		t.Error("readiness probe does not call /readyz")
	}
	if p := pgmux.LivenessProbe; p == nil || !strings.HasSuffix(cmd(&p.ProbeHandler), "/healthz") {
		t.Error("liveness probe does not call /healthz")
	}
	if l := pgmux.Lifecycle; l == nil || l.PreStop == nil || l.PreStop.Exec == nil || !strings.Contains(strings.Join(l.PreStop.Exec.Command, " "), "--post http://127.0.0.1:9127/drain") {
		t.Error("preStop does not POST /drain")
	}
	// Traces go to a collector in the pod, started before pgmux, which pgmux
	// and the app both export to.
	if ep := cfg.Tracing.OTLPEndpoint; ep == "" {
		t.Error("the ConfigMap's pgmux.yaml sets no tracing.otlp_endpoint")
	} else {
		collector := -1
		for i, c := range spec.InitContainers {
			for _, p := range c.Ports {
				if strings.HasSuffix(ep, fmt.Sprintf("127.0.0.1:%d", p.ContainerPort)) {
					collector = i
				}
			}
		}
		if collector < 0 || spec.InitContainers[collector].Name == "pgmux" {
			t.Errorf("tracing.otlp_endpoint %s: no sidecar in the pod listens there", ep)
		} else if c := spec.InitContainers[collector]; c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways ||
			collector > slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "pgmux" }) {
			t.Errorf("the collector %s is not a native sidecar started before pgmux", c.Name)
		}
		appSends := false
		for _, c := range spec.Containers {
			for _, e := range c.Env {
				appSends = appSends || e.Name == "OTEL_EXPORTER_OTLP_ENDPOINT" && e.Value == ep
			}
		}
		if !appSends {
			t.Errorf("the app's OTEL_EXPORTER_OTLP_ENDPOINT is not pgmux's %s", ep)
		}
	}
	grace := spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second <= cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds must exceed shutdown_timeout (%s)", cfg.ShutdownTimeout)
	}
}

// readManifest reads the Kubernetes objects of a manifest, each checked
// strictly against its kind's type.
func readManifest(t *testing.T, file string) ([]appsv1.Deployment, []corev1.ConfigMap, []corev1.Service) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var deployments []appsv1.Deployment
	var configs []corev1.ConfigMap
	var services []corev1.Service
	for i, doc := range bytes.Split(b, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s document %d: %v", file, i, err)
		}
		var into any
		switch meta.Kind {
		case "Deployment":
			deployments = append(deployments, appsv1.Deployment{})
			into = &deployments[len(deployments)-1]
		case "ConfigMap":
			configs = append(configs, corev1.ConfigMap{})
			into = &configs[len(configs)-1]
		case "Service":
			services = append(services, corev1.Service{})
			into = &services[len(services)-1]
		case "Secret":
			into = &corev1.Secret{}
		default:
			t.Fatalf("%s document %d: unexpected kind %q", file, i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, into); err != nil {
			t.Fatalf("%s: %s: %v", file, meta.Kind, err)
		}
	}
	return deployments, configs, services
}

// loadConfigMap loads the ConfigMap's pgmux.yaml, its auth_file (mounted
// from the Secret) replaced by one of the test's.
func loadConfigMap(t *testing.T, cm corev1.ConfigMap) *config.Config {
	t.Helper()
	dir := t.TempDir()
	conf := strings.ReplaceAll(cm.Data["pgmux.yaml"], "/etc/pgmux/secret/userlist.txt", filepath.Join(dir, "userlist.txt"))
	os.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(`"app" "x"`+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "pgmux.yaml"), []byte(conf), 0o600)
	cfg, err := config.Load(filepath.Join(dir, "pgmux.yaml"), nil)
	if err != nil {
		t.Fatalf("%s's pgmux.yaml: %v", cm.Name, err)
	}
	return cfg
}

// TestSharedPoolerManifest: several pgmux behind a Service find each other
// through a headless Service of the same pods, for the cancels the Service
// sends to another instance than the client's.
func TestSharedPoolerManifest(t *testing.T) {
	deployments, configs, services := readManifest(t, "deploy/kubernetes/shared.yaml")
	if len(deployments) != 1 || len(configs) != 1 || len(services) != 2 {
		t.Fatalf("want a Deployment, a ConfigMap and two Services, got %d, %d and %d", len(deployments), len(configs), len(services))
	}
	cfg := loadConfigMap(t, configs[0])
	d := deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Error("fewer than two instances")
	}
	var headless *corev1.Service
	for i, s := range services {
		for k, v := range s.Spec.Selector {
			if d.Spec.Template.Labels[k] != v {
				t.Errorf("Service %s does not select the Deployment's pods", s.Name)
			}
		}
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless = &services[i]
		}
	}
	if headless == nil {
		t.Fatal("no headless Service for the peers")
	}
	name, port := cfg.PeersDNSAddr()
	if !strings.HasPrefix(name, headless.Name+".") {
		t.Errorf("peers_dns %s is not the headless Service %s", name, headless.Name)
	}
	if fmt.Sprint(headless.Spec.Ports[0].Port) != port {
		t.Errorf("peers_dns port %s, the headless Service's %d", port, headless.Spec.Ports[0].Port)
	}
	if !headless.Spec.PublishNotReadyAddresses {
		t.Error("a draining instance's address would leave the headless Service while its clients may still cancel")
	}
}

// TestDockerfileBuild builds pgmux with the Dockerfile's own build command
// (no Docker engine runs here) and checks the result is a static binary that
// runs.
func TestDockerfileBuild(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o /out/pgmux (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no `RUN CGO_ENABLED=0 go build … -o /out/pgmux …` line in the Dockerfile")
	}
	out := filepath.Join(t.TempDir(), "pgmux")
	line := string(m[1]) + " -o " + out + " " + string(m[2]) // as the shell in the build stage runs it
	if o, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", line, err, o)
	}
	if o, _ := exec.Command("go", "version", "-m", out).Output(); !bytes.Contains(o, []byte("CGO_ENABLED=0")) {
		t.Fatalf("not built with CGO_ENABLED=0:\n%s", o)
	}
	if o, err := exec.Command(out, "--help").CombinedOutput(); err != nil {
		t.Fatalf("the binary does not run: %v\n%s", err, o)
	}
}
