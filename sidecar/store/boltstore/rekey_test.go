package boltstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/storetest"
)

func fill(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		name := fmt.Sprintf("client-%d", i)
		if _, err := s.PutProject(t.Context(), storetest.OAuthProject(name)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutToken(t.Context(), name, storetest.SampleToken(name)); err != nil {
			t.Fatal(err)
		}
	}
}

func checkFilled(t *testing.T, s *Store, n int) {
	t.Helper()
	ps, err := s.Projects(t.Context())
	if err != nil || len(ps) != n {
		t.Fatalf("%d projects (error %v), want %d", len(ps), err, n)
	}
	for _, p := range ps {
		tok, err := s.Token(t.Context(), p.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !tok.RefreshToken.Equal(secret.New("refresh-token-of-"+p.Name)) || !p.Auth.OAuth.ClientSecret.Equal(secret.New("client-secret-of-"+p.Name)) {
			t.Fatalf("%s: secrets changed", p.Name)
		}
	}
}

func TestRekey(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	other := open(t, o) // another process with the store open
	fill(t, s, 5)
	oldKey, _ := os.ReadFile(o.KeyFile)

	var calls, total int
	if err := s.Rekey(t.Context(), func(done, n int) { calls, total = done, n }); err != nil {
		t.Fatal(err)
	}
	if calls != 10 || total != 10 {
		t.Errorf("progress ended at %d of %d, want 10 of 10", calls, total)
	}
	newKey, _ := os.ReadFile(o.KeyFile)
	if bytes.Equal(oldKey, newKey) || len(newKey) != KeySize {
		t.Fatal("the key file was not replaced by a new key")
	}
	if fi, _ := os.Stat(o.KeyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("new key file mode %v", fi.Mode().Perm())
	}
	if _, err := os.Stat(o.KeyFile + newKeySuffix); err == nil {
		t.Fatal("the new key file was left beside the key file")
	}
	checkFilled(t, s, 5)
	checkFilled(t, other, 5) // picks the new key up
	checkFilled(t, open(t, o), 5)

	// The old key opens neither the store nor any record: each record was re-encrypted.
	writeFile(t, o.KeyFile, oldKey, 0o600)
	if _, err := Open(t.Context(), o); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Open with the old key after a rekey: %v, want ErrDecrypt", err)
	}
	k, err := newRecordKey(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	withRaw(t, o.Path, func(name, v []byte) {
		if _, _, err := k.open(bucketProjects, name, v); !errors.Is(err, ErrDecrypt) {
			t.Errorf("project %s still opens with the old key (%v)", name, err)
		}
	})
}

// withRaw calls fn with every project record as stored.
func withRaw(t *testing.T, path string, fn func(name, v []byte)) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProjects).ForEach(func(name, v []byte) error { fn(name, v); return nil })
	})
}

// A rekey that crashed after its commit, before renaming the new key file, is finished by Open.
func TestRekeyInterruptedAfterCommit(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	fill(t, s, 3)
	oldKey, _ := os.ReadFile(o.KeyFile)
	if err := s.Rekey(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Put the files back as they were between the commit and the rename.
	if err := os.Rename(o.KeyFile, o.KeyFile+newKeySuffix); err != nil {
		t.Fatal(err)
	}
	newKey, _ := os.ReadFile(o.KeyFile + newKeySuffix)
	writeFile(t, o.KeyFile, oldKey, 0o600)

	checkFilled(t, open(t, o), 3)
	if got, _ := os.ReadFile(o.KeyFile); !bytes.Equal(got, newKey) {
		t.Fatal("Open did not move the new key into place")
	}
	if _, err := os.Stat(o.KeyFile + newKeySuffix); err == nil {
		t.Fatal("the new key file is still there")
	}
}

// A rekey that crashed before its commit leaves the store under the old key; the next rekey works.
func TestRekeyInterruptedBeforeCommit(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	fill(t, s, 3)
	writeFile(t, o.KeyFile+newKeySuffix, bytes.Repeat([]byte{9}, KeySize), 0o600)
	s.Close()
	s = open(t, o)
	checkFilled(t, s, 3)
	if err := s.Rekey(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	checkFilled(t, open(t, o), 3)
}
