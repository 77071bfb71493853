package filestore

import (
	"fmt"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store/storetest"
)

// BenchmarkPutProject5000 measures one project write into a store holding 5,000 projects: every
// write re-encrypts and rewrites the whole file.
func BenchmarkPutProject5000(b *testing.B) {
	const n = 5000
	dir := b.TempDir()
	s, err := Open(b.Context(), Options{Path: dir + "/store.db", KeyFile: dir + "/store.key", Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ps := make([]project.Project, n)
	for i := range ps {
		ps[i] = storetest.OAuthProject(fmt.Sprintf("client-%04d", i))
	}
	if _, err := s.PutProjects(b.Context(), ps); err != nil {
		b.Fatal(err)
	}
	i := 0
	start := time.Now()
	for b.Loop() {
		if _, err := s.PutProject(b.Context(), ps[i%n]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(i), "ms/write")
}

// BenchmarkAddProjects5000 measures adding 5,000 projects one at a time, as `postern project add`
// run 5,000 times would, into a new store.
func BenchmarkAddProjects5000(b *testing.B) {
	const n = 5000
	for b.Loop() {
		dir := b.TempDir()
		s, err := Open(b.Context(), Options{Path: dir + "/store.db", KeyFile: dir + "/store.key", Create: true})
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			if _, err := s.PutProject(b.Context(), storetest.OAuthProject(fmt.Sprintf("client-%04d", i))); err != nil {
				b.Fatal(err)
			}
		}
		s.Close()
	}
}
