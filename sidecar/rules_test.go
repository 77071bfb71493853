package sidecar

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"

	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/health"
)

// rulesFile is the example alerting rules shipped in contrib.
const rulesFile = "../contrib/prometheus/postern-rules.yml"

// exposedNames are the metric names /metrics exposes: those of every collector Serve registers.
func exposedNames(t *testing.T) []string {
	t.Helper()
	descs := []*prometheus.Desc{
		descStoreReads, descProjects, descPendingWrite, descRefreshWaits, descWaiting, descConns, descDials,
		descAuthFail, descUp, descTokenOK, descSessions, descListenConns, descListenMax, descListenFull,
		descAcceptErrors, descRecipients,
	}
	ch := make(chan *prometheus.Desc, 1000)
	for _, c := range []prometheus.Collector{
		health.New(health.Options{}).Collector(),
		buildinfo.Collector(buildinfo.Get()),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		c.Describe(ch)
	}
	close(ch)
	for d := range ch {
		descs = append(descs, d)
	}
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	var names []string
	for _, d := range descs {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names = append(names, m[1])
	}
	return names
}

// The example rules parse, every rule has an expression, and every Postern metric an expression
// uses is one /metrics exposes (a histogram by its _bucket, _sum or _count series). With promtool
// on the PATH (Debian's package prometheus), it checks them too.
func TestPrometheusRulesUseExposedMetrics(t *testing.T) {
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	names := exposedNames(t)
	for _, n := range []string{"postern_build_info", "postern_deliveries_total", "postern_project_health",
		"postern_delivery_duration_seconds", "postern_upstream_duration_seconds", "go_goroutines", "process_open_fds",
		"postern_oauth_client_secret_expiry_timestamp_seconds"} {
		if !slices.Contains(names, n) {
			t.Errorf("/metrics lacks %s", n)
		}
	}
	metric := regexp.MustCompile(`\b((?:postern|process|go)_[a-z0-9_]+)`)
	rules := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			rules++
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("group %s: a rule without alert or expr: %+v", g.Name, r)
			}
			for _, m := range metric.FindAllStringSubmatch(r.Expr, -1) {
				n := m[1]
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
				if !slices.Contains(names, n) && !slices.Contains(names, base) {
					t.Errorf("alert %s uses %s, which /metrics does not expose", r.Alert, n)
				}
			}
		}
	}
	if rules == 0 {
		t.Fatal("no rules")
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "rules", rulesFile).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not on the PATH: the rules were parsed, not checked by Prometheus")
	}
}
