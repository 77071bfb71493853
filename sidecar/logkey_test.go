package sidecar

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// slogCalls are the log/slog functions and methods whose arguments after the message (or, for
// With and the attribute constructors, all of them) are key-value pairs.
var slogCalls = map[string]int{
	// name: index of the first key-value argument
	"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
	"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
	"Log": 3, "With": 0,
	"String": 0, "Any": 0, "Int": 0, "Int64": 0, "Bool": 0, "Duration": 0, "Time": 0, "Group": 0,
}

// TestLogKeyErr: every log call names its error "err", never "error", so that one query finds
// every failure in the log. It scans the non-test source of sidecar, plugin and vault.
func TestLogKeyErr(t *testing.T) {
	t.Parallel()
	checked := 0
	for _, root := range []string{".", "../plugin", "../vault"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			checked++
			for _, at := range errorKeys(t, path) {
				t.Errorf(`%s: a log call uses the key "error"; the key for errors is "err"`, at)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < 50 {
		t.Fatalf("only %d files scanned; the check looked at nothing", checked)
	}
}

// errorKeys returns the positions of "error" used as a key in the slog calls of one file.
func errorKeys(t *testing.T, path string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		first, ok := slogCalls[sel.Sel.Name]
		if !ok {
			return true
		}
		if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name != "slog" && first == 0 && sel.Sel.Name != "With" {
			return true // String, Any, ... of another package
		}
		for i := first; i < len(call.Args); {
			if isAttr(call.Args[i]) {
				i++ // a slog.Attr stands for a pair; its own key is checked where it is made
				continue
			}
			if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, _ := strconv.Unquote(lit.Value); s == "error" {
					found = append(found, fset.Position(lit.Pos()).String())
				}
			}
			i += 2
		}
		return true
	})
	return found
}

// isAttr reports an argument made by slog.String, slog.Any, ...: one argument for a key and its
// value.
func isAttr(e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "slog"
}
