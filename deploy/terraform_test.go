package deploy

import (
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// tfModule is the parsed deploy/terraform directory, with var.* bound to the
// variables' defaults (unknown where there is none) for evaluating attributes.
type tfModule struct {
	blocks []*hclsyntax.Block
	ctx    *hcl.EvalContext
}

func loadTerraform(t *testing.T) *tfModule {
	t.Helper()
	files, err := filepath.Glob("terraform/*.tf")
	if err != nil || len(files) == 0 {
		t.Fatalf("no terraform files: %v", err)
	}
	p := hclparse.NewParser()
	m := &tfModule{}
	for _, name := range files {
		f, diags := p.ParseHCLFile(name)
		if diags.HasErrors() {
			t.Fatalf("parse %s: %s", name, diags.Error())
		}
		m.blocks = append(m.blocks, f.Body.(*hclsyntax.Body).Blocks...)
	}

	vars := map[string]cty.Value{}
	for _, b := range m.blocks {
		if b.Type != "variable" {
			continue
		}
		def, ok := b.Body.Attributes["default"]
		if !ok {
			vars[b.Labels[0]] = cty.DynamicVal
			continue
		}
		v, diags := def.Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("variable %s: default is not a literal: %s", b.Labels[0], diags.Error())
		}
		vars[b.Labels[0]] = v
	}
	m.ctx = &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(vars)}}
	return m
}

// block returns the one top-level block of typ with labels, failing when absent.
func (m *tfModule) block(t *testing.T, typ string, labels ...string) *hclsyntax.Body {
	t.Helper()
	for _, b := range m.blocks {
		if b.Type == typ && slices.Equal(b.Labels, labels) {
			return b.Body
		}
	}
	t.Fatalf("no %s %q block", typ, labels)
	return nil
}

// nested returns the nested blocks of typ in body.
func nested(body *hclsyntax.Body, typ string) []*hclsyntax.Body {
	var out []*hclsyntax.Body
	for _, b := range body.Blocks {
		if b.Type == typ {
			out = append(out, b.Body)
		}
	}
	return out
}

func attr(t *testing.T, body *hclsyntax.Body, name string) *hclsyntax.Attribute {
	t.Helper()
	a, ok := body.Attributes[name]
	if !ok {
		t.Fatalf("attribute %s is missing", name)
	}
	return a
}

// value evaluates body.name with var.* bound to the defaults and returns it as
// a string (numbers in their shortest form).
func (m *tfModule) value(t *testing.T, body *hclsyntax.Body, name string) string {
	t.Helper()
	v, diags := attr(t, body, name).Expr.Value(m.ctx)
	if diags.HasErrors() {
		t.Fatalf("%s: %s", name, diags.Error())
	}
	if !v.IsWhollyKnown() {
		t.Fatalf("%s: not known without inputs", name)
	}
	switch v.Type() {
	case cty.String:
		return v.AsString()
	case cty.Number:
		return v.AsBigFloat().Text('f', -1)
	case cty.Bool:
		if v.True() {
			return "true"
		}
		return "false"
	}
	t.Fatalf("%s: unexpected type %s", name, v.Type().FriendlyName())
	return ""
}

// references returns the "a.b" prefixes of every traversal in body.name.
func references(t *testing.T, body *hclsyntax.Body, name string) []string {
	t.Helper()
	var out []string
	for _, tr := range attr(t, body, name).Expr.Variables() {
		s := tr.RootName()
		if len(tr) > 1 {
			if a, ok := tr[1].(hcl.TraverseAttr); ok {
				s += "." + a.Name
			}
		}
		out = append(out, s)
	}
	return out
}

func TestTerraformTargetGroupChecksAgentHealth(t *testing.T) {
	m := loadTerraform(t)
	tg := m.block(t, "resource", "aws_lb_target_group", "app")
	hcs := nested(tg, "health_check")
	if len(hcs) != 1 {
		t.Fatalf("want one health_check block, got %d", len(hcs))
	}
	want := map[string]string{
		"port":                "8081",
		"path":                "/health.html",
		"matcher":             "200",
		"interval":            "10",
		"timeout":             "5",
		"healthy_threshold":   "2",
		"unhealthy_threshold": "2",
		"protocol":            "HTTP",
	}
	for name, w := range want {
		if got := m.value(t, hcs[0], name); got != w {
			t.Errorf("health_check.%s = %s, want %s", name, got, w)
		}
	}
	// The app's traffic goes to the app port.
	if got := m.value(t, tg, "port"); got != "3000" {
		t.Errorf("target group port = %s, want 3000", got)
	}
}

func TestTerraformAutoscalingGroup(t *testing.T) {
	m := loadTerraform(t)
	asg := m.block(t, "resource", "aws_autoscaling_group", "app")
	if got := m.value(t, asg, "health_check_type"); got != "ELB" {
		t.Errorf("health_check_type = %s, want ELB", got)
	}
	// Packages, git clone, npm ci and a build take minutes on a small instance.
	if got := m.value(t, asg, "health_check_grace_period"); got != "300" {
		t.Errorf("health_check_grace_period = %s, want 300", got)
	}
	if refs := references(t, asg, "target_group_arns"); !slices.Contains(refs, "aws_lb_target_group.app") {
		t.Errorf("target_group_arns = %q, want the app target group", refs)
	}
	lts := nested(asg, "launch_template")
	if len(lts) != 1 || !slices.Contains(references(t, lts[0], "id"), "aws_launch_template.app") {
		t.Errorf("the group does not launch from aws_launch_template.app")
	}
}

func TestTerraformSecurityGroupLetsALBReachAgent(t *testing.T) {
	m := loadTerraform(t)
	sg := m.block(t, "resource", "aws_security_group", "app")
	open := map[string]bool{}
	for _, in := range nested(sg, "ingress") {
		from, to := m.value(t, in, "from_port"), m.value(t, in, "to_port")
		if from != to {
			t.Errorf("ingress %s-%s: want single ports", from, to)
		}
		if !slices.Contains(references(t, in, "security_groups"), "aws_security_group.alb") {
			t.Errorf("ingress on %s is not from the load balancer's group", from)
		}
		open[from] = true
	}
	for _, port := range []string{"8081", "3000"} {
		if !open[port] {
			t.Errorf("port %s is not open to the load balancer (open: %v)", port, open)
		}
	}
	// The load balancer's own group is attached to it.
	if refs := references(t, m.block(t, "resource", "aws_lb", "app"), "security_groups"); !slices.Contains(refs, "aws_security_group.alb") {
		t.Errorf("aws_lb.app security_groups = %q", refs)
	}
}

// userDataCall returns the templatefile(...) call in the launch template's
// user_data (inside base64encode).
func userDataCall(t *testing.T, m *tfModule) *hclsyntax.FunctionCallExpr {
	t.Helper()
	lt := m.block(t, "resource", "aws_launch_template", "app")
	outer, ok := attr(t, lt, "user_data").Expr.(*hclsyntax.FunctionCallExpr)
	if !ok || outer.Name != "base64encode" || len(outer.Args) != 1 {
		t.Fatalf("user_data is not base64encode(...)")
	}
	call, ok := outer.Args[0].(*hclsyntax.FunctionCallExpr)
	if !ok || call.Name != "templatefile" || len(call.Args) != 2 {
		t.Fatalf("user_data is not base64encode(templatefile(path, vars))")
	}
	return call
}

func TestTerraformUserDataIsTheBootstrapScript(t *testing.T) {
	m := loadTerraform(t)
	call := userDataCall(t, m)

	// The path: "${path.module}/../user_data.sh".
	tmpl, ok := call.Args[0].(*hclsyntax.TemplateExpr)
	if !ok {
		t.Fatalf("templatefile path is not a string template")
	}
	var lit strings.Builder
	for _, part := range tmpl.Parts {
		if l, ok := part.(*hclsyntax.LiteralValueExpr); ok && l.Val.Type() == cty.String {
			lit.WriteString(l.Val.AsString())
		}
	}
	rel := strings.TrimPrefix(lit.String(), "/")
	if filepath.Base(rel) != "user_data.sh" {
		t.Fatalf("templatefile renders %q, want user_data.sh", lit.String())
	}
	if got := filepath.Clean(filepath.Join("terraform", rel)); got != "user_data.sh" {
		t.Errorf("templatefile path resolves to deploy/%s, want deploy/user_data.sh", got)
	}

	// Every placeholder of the script gets a value, and nothing else is passed.
	obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr)
	if !ok {
		t.Fatalf("templatefile vars are not an object")
	}
	var keys []string
	for _, item := range obj.Items {
		k, diags := item.KeyExpr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("templatefile key: %s", diags.Error())
		}
		keys = append(keys, k.AsString())
	}
	sort.Strings(keys)
	if want := templateVars(t); !slices.Equal(keys, want) {
		t.Errorf("templatefile passes %q\nuser_data.sh uses    %q", keys, want)
	}

	// The script and the target group agree on the health port: both come from
	// var.health_port.
	for _, item := range obj.Items {
		k, _ := item.KeyExpr.Value(nil)
		wantRef := map[string]string{"HEALTH_PORT": "var.health_port", "APP_PORT": "var.app_port"}[k.AsString()]
		if wantRef == "" {
			continue
		}
		var refs []string
		for _, tr := range item.ValueExpr.Variables() {
			refs = append(refs, tr.RootName()+"."+tr[1].(hcl.TraverseAttr).Name)
		}
		if !slices.Equal(refs, []string{wantRef}) {
			t.Errorf("%s = %q, want %s", k.AsString(), refs, wantRef)
		}
	}
	tg := m.block(t, "resource", "aws_lb_target_group", "app")
	if refs := references(t, nested(tg, "health_check")[0], "port"); !slices.Equal(refs, []string{"var.health_port"}) {
		t.Errorf("health_check.port = %q, want var.health_port", refs)
	}
}
