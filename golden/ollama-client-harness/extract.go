// Copies declarations verbatim from Ollama's api/client.go and api/types.go
// (go/parser + go/printer, no edits) into one file of package api.
package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
)

func main() {
	want := map[string]bool{"Client": true, "checkError": true, "getAuthorizationToken": true, "maxBufferSize": true,
		"do": true, "stream": true, "StatusError": true, "AuthorizationError": true, "Error": true, "NewClient": true}
	var out bytes.Buffer
	out.WriteString("// Code copied verbatim from ollama/ollama api/client.go and api/types.go by extract; do not commit.\npackage api\n\nimport (\n\t\"bufio\"\n\t\"bytes\"\n\t\"context\"\n\t\"encoding/json\"\n\t\"errors\"\n\t\"fmt\"\n\t\"io\"\n\t\"net/http\"\n\t\"net/url\"\n\t\"runtime\"\n\t\"strconv\"\n\t\"time\"\n\n\t\"github.com/ollama/ollama/auth\"\n\t\"github.com/ollama/ollama/envconfig\"\n\t\"github.com/ollama/ollama/format\"\n\t\"github.com/ollama/ollama/version\"\n)\n\n")
	for _, name := range os.Args[1:] {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			panic(err)
		}
		for _, d := range f.Decls {
			keep := false
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Name.Name == "Error" {
					// only the Error methods of StatusError and AuthorizationError
					t := d.Recv.List[0].Type
					if id, ok := t.(*ast.Ident); ok && (id.Name == "StatusError" || id.Name == "AuthorizationError") {
						keep = true
					}
				} else {
					keep = want[d.Name.Name]
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						keep = keep || want[s.Name.Name]
					case *ast.ValueSpec:
						for _, n := range s.Names {
							keep = keep || want[n.Name]
						}
					}
				}
			}
			if keep {
				printer.Fprint(&out, fset, d)
				out.WriteString("\n\n")
			}
		}
	}
	os.Stdout.Write(out.Bytes())
}
