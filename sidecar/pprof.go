package sidecar

import (
	"maps"
	"net/http"
	"net/http/pprof"
)

// withProfiler returns routes with Go's profiler added under /debug/pprof/ (debug.pprof).
func withProfiler(routes map[string]http.Handler) map[string]http.Handler {
	out := maps.Clone(routes)
	if out == nil {
		out = map[string]http.Handler{}
	}
	out["/debug/pprof/"] = http.HandlerFunc(pprof.Index)
	out["/debug/pprof/cmdline"] = http.HandlerFunc(pprof.Cmdline)
	out["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
	out["/debug/pprof/symbol"] = http.HandlerFunc(pprof.Symbol)
	out["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	return out
}
