package buildinfo

import (
	"maps"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestGetFallsBackToTheBuild(t *testing.T) {
	t.Parallel()
	// A test binary is not stamped: the version comes from Go's build information or is Unknown.
	i := Get()
	if i.Version == "" || i.GoVersion != runtime.Version() {
		t.Fatalf("Get() = %+v", i)
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		in   Info
		want string
	}{
		{"release", Info{Version: "v0.9.0", GoVersion: "go1.26.8", Revision: "0123abcd"}, "v0.9.0 (go1.26.8, revision 0123abcd)"},
		{"no revision", Info{Version: "v0.9.0", GoVersion: "go1.26.8"}, "v0.9.0 (go1.26.8)"},
	} {
		if got := c.in.String(); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

func TestCollector(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector(Info{Version: "v0.9.0-3-g0123abcd", GoVersion: "go1.26.8", Revision: "0123abcd"}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "postern_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v", mfs)
	}
	m := mfs[0].GetMetric()[0]
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"version": "v0.9.0-3-g0123abcd", "goversion": "go1.26.8", "revision": "0123abcd"}
	if !maps.Equal(got, want) || m.GetGauge().GetValue() != 1 {
		t.Fatalf("postern_build_info labels %v value %v, want %v and 1", got, m.GetGauge().GetValue(), want)
	}
}
