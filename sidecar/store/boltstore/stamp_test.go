package boltstore

import (
	"errors"
	"os"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/storetest"
)

// TestProjectsStampFollowsProjects checks that the stamp changes with every change to a project
// record, whoever makes it, and with nothing else.
func TestProjectsStampFollowsProjects(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	ctx := t.Context()
	stamp := func() string {
		t.Helper()
		v, err := s.ProjectsStamp(ctx)
		if err != nil {
			t.Fatalf("ProjectsStamp: %v", err)
		}
		return v
	}
	seen := map[string]string{}
	changed := func(what string) {
		t.Helper()
		v := stamp()
		if prev, ok := seen[v]; ok {
			t.Fatalf("after %s the stamp is the one seen after %s", what, prev)
		}
		seen[v] = what
	}
	same := func(what string) {
		t.Helper()
		if v := stamp(); seen[v] == "" {
			t.Fatalf("%s changed the stamp", what)
		}
	}

	changed("creating the store")
	same("reading it again")
	v, err := s.PutProject(ctx, storetest.BasicProject("client-a"))
	if err != nil {
		t.Fatal(err)
	}
	changed("adding a project")
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-b")); err != nil {
		t.Fatal(err)
	}
	changed("adding another")
	withTwo, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	same("reading the file")
	if _, err := s.PutToken(ctx, "client-a", project.Token{State: project.TokenNeedsReauth}); err != nil {
		t.Fatal(err)
	}
	same("writing a token")

	p := storetest.BasicProject("client-a")
	p.Version = v
	if _, err := s.PutProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	changed("rewriting a project with the same settings")
	if err := s.DeleteProject(ctx, "client-b"); err != nil {
		t.Fatal(err)
	}
	changed("deleting a project")
	// A database put back from a copy gives the stamp of the state it copied, not the current one.
	current := stamp()
	writeFile(t, o.Path, withTwo, 0o600)
	restored, err := s.ProjectsStamp(ctx)
	if err != nil {
		t.Fatalf("ProjectsStamp of the restored database: %v", err)
	}
	if restored == current || seen[restored] != "adding another" {
		t.Fatalf("the restored database's stamp is the one after %q, want the one after adding another", seen[restored])
	}

	if err := s.Rekey(ctx, nil); err != nil {
		t.Fatal(err)
	}
	changed("a rekey") // of the restored database

	// A store that lost its projects fails as Projects does.
	empty := paths(t)
	e := create(t, empty)
	raw, _ := os.ReadFile(empty.Path)
	if _, err := e.PutProject(ctx, storetest.BasicProject("client-c")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, empty.Path, raw, 0o600)
	if _, err := e.ProjectsStamp(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("ProjectsStamp of a store that lost its projects: %v, want ErrProjectsLost", err)
	}
}
