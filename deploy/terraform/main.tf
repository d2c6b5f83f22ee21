# Example stack: an Application Load Balancer in front of an Auto Scaling group
# whose instances bootstrap the app and the agent from user_data. The target
# group's health check hits the agent's /health.html, answered from the agent's
# own state, so a slow page of the app never marks a target unhealthy.
#
# Proxy mode (var.proxy_port, the default): the agent's traffic front owns
# proxy_port, the target group forwards there and checks /health.html on the
# same port (traffic-port); the app listens on loopback (app_port, and
# app_port + 1 during `agentctl reload`), and only proxy_port is open to the
# load balancer. Restarts and deploys then cost no 502s. With proxy_port = 0 the
# load balancer reaches the app on app_port and the health check the agent's
# health_port.

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

data "aws_ami" "al2023" {
  most_recent = true
  owners      = ["amazon"]
  filter {
    name   = "name"
    values = ["al2023-ami-2023.*-x86_64"]
  }
}

locals {
  proxy = var.proxy_port != 0
  # The port the target group forwards to.
  traffic_port = local.proxy ? var.proxy_port : var.app_port
  # What the instances open to the load balancer: description => port.
  instance_ports = local.proxy ? tomap({
    "traffic and health checks to the agent's proxy" = var.proxy_port
    }) : tomap({
    "app traffic"                       = var.app_port
    "health checks to the agent's page" = var.health_port
  })
}

# --- security groups -------------------------------------------------------------

resource "aws_security_group" "alb" {
  name_prefix = "${var.app_name}-alb-"
  description = "Load balancer: HTTP from anywhere"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTP"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "app" {
  name_prefix = "${var.app_name}-app-"
  description = "Instances: traffic and health checks from the load balancer"
  vpc_id      = var.vpc_id

  dynamic "ingress" {
    for_each = local.instance_ports
    content {
      description     = "${ingress.key} from the load balancer"
      from_port       = ingress.value
      to_port         = ingress.value
      protocol        = "tcp"
      security_groups = [aws_security_group.alb.id]
    }
  }
  egress {
    description = "packages, git, npm"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  lifecycle {
    create_before_destroy = true
  }
}

# --- load balancer ---------------------------------------------------------------

resource "aws_lb" "app" {
  name               = "${var.app_name}-alb"
  load_balancer_type = "application"
  security_groups    = [aws_security_group.alb.id]
  subnets            = var.public_subnet_ids
  idle_timeout       = 60
}

resource "aws_lb_target_group" "app" {
  name     = "${var.app_name}-tg"
  port     = local.traffic_port
  protocol = "HTTP"
  vpc_id   = var.vpc_id
  # An instance leaving (instance refresh, scale-in) is deregistered first: the
  # load balancer sends it nothing new and waits this long for requests in
  # flight. It covers the agent's stop.drain (health 503 before the app stops)
  # plus the app's stop.timeout (10 s), so the app stops only after the load
  # balancer has let the target go.
  deregistration_delay = var.stop_drain_seconds + 10

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = local.proxy ? "traffic-port" : var.health_port
    path                = "/health.html"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.app.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.app.arn
  }
}

# --- instances -------------------------------------------------------------------

resource "aws_launch_template" "app" {
  name_prefix            = "${var.app_name}-"
  image_id               = var.ami_id != "" ? var.ami_id : data.aws_ami.al2023.id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.app.id]

  user_data = base64encode(templatefile("${path.module}/../user_data.sh", {
    APP_NAME      = var.app_name
    APP_REPO      = var.app_repo
    APP_REF       = var.app_ref
    APP_DIR       = var.app_dir
    APP_USER      = var.app_user
    APP_COMMAND   = join(" ", var.app_command)
    APP_PORT      = var.app_port
    NODE_MAJOR    = var.node_major
    MAX_RSS       = var.max_rss
    HEALTH_PORT   = var.health_port
    PROXY_PORT    = local.proxy ? var.proxy_port : ""
    STOP_DRAIN    = "${var.stop_drain_seconds}s"
    AGENT_PKG_URL = var.agent_pkg_url
    AGENT_BIN_URL = var.agent_bin_url
    AGENT_SHA256  = var.agent_sha256
  }))

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required" # IMDSv2 only
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name = var.app_name
    }
  }
}

resource "aws_autoscaling_group" "app" {
  name_prefix         = "${var.app_name}-"
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  vpc_zone_identifier = var.private_subnet_ids
  target_group_arns   = [aws_lb_target_group.app.arn]

  # Replace instances the load balancer finds unhealthy, not only dead ones; the
  # grace period covers the bootstrap (packages, git clone, npm ci, build, start).
  health_check_type         = "ELB"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.app.id
    version = aws_launch_template.app.latest_version
  }

  # The fleet deploy of a new AMI or user_data: a new launch template version
  # (latest_version above) starts a rolling instance refresh. Instances are
  # replaced a batch at a time, each new one counting as healthy only once the
  # load balancer's check passes (the agent's /health.html, 200 only when the
  # app serves), never dropping below min_healthy_percentage of the group.
  # Checkpoints (pause at some percentages to look) are off unless asked for.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = var.refresh_min_healthy_percentage
      instance_warmup        = 300
      skip_matching          = true
      checkpoint_percentages = length(var.refresh_checkpoints) > 0 ? concat(var.refresh_checkpoints, [100]) : null
      checkpoint_delay       = length(var.refresh_checkpoints) > 0 ? var.refresh_checkpoint_delay : null
    }
  }

  tag {
    key                 = "Name"
    value               = var.app_name
    propagate_at_launch = true
  }
}
