// Package buildinfo says which Postern this is, for `postern version`, the start-up log, the status
// page and the postern_build_info metric.
//
//  1. The build stamps the version and revision: `make build` and `make dist` link with
//     -ldflags "-X github.com/postern/postern/sidecar/buildinfo.version=v0.9.0
//     -X github.com/postern/postern/sidecar/buildinfo.revision=0123abcd" (see contrib/package/version.sh).
//  2. A binary built without them (go build, go install) falls back to what Go recorded in it: the
//     module version (set by go install module@version, and from the VCS for a build in a checkout)
//     and the VCS revision.
//  3. Get returns the result; Collector exposes it as postern_build_info{version,goversion,revision} 1.
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set by the linker (-ldflags -X); never written at run time.
var (
	version  string
	revision string
)

// Unknown is the version of a binary that was neither stamped nor built as a module version.
const Unknown = "(devel)"

// Info is which Postern this is.
type Info struct {
	// Version is the release (v0.9.0), or git describe's answer between releases
	// (v0.9.0-3-g0123abcd-dirty), or Unknown.
	Version string
	// GoVersion is the Go release the binary was built with (go1.26.8).
	GoVersion string
	// Revision is the commit the binary was built from, "" when unknown.
	Revision string
}

// Get returns the stamped version and revision, or else the ones Go recorded in the binary.
func Get() Info {
	info := Info{Version: version, GoVersion: runtime.Version(), Revision: revision}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info.withDefaults()
	}
	if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = bi.Main.Version
	}
	if info.Revision == "" {
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if info.Revision != "" && modified {
			info.Revision += "-dirty"
		}
	}
	return info.withDefaults()
}

func (i Info) withDefaults() Info {
	if i.Version == "" {
		i.Version = Unknown
	}
	return i
}

// String is the one-line form `postern version` prints: "v0.9.0 (go1.26.8, revision 0123abcd)".
func (i Info) String() string {
	s := i.Version + " (" + i.GoVersion
	if i.Revision != "" {
		s += ", revision " + i.Revision
	}
	return s + ")"
}

// Collector returns the postern_build_info gauge for info: always 1, the facts in its labels, so
// that a query can join it to any other metric of the same instance.
func Collector(info Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postern_build_info",
		Help: "Which Postern this is: always 1, the version, Go version and revision in the labels.",
		ConstLabels: prometheus.Labels{
			"version": info.Version, "goversion": info.GoVersion, "revision": info.Revision,
		},
	}, func() float64 { return 1 })
}
