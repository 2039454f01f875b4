# Checks the Homebrew formula without Homebrew (which the Linux build machines lack), for
# `cargo xtask dist`:
#
#   ruby check_formula.rb FORMULA.rb LIB_DIR BIN_DIR
#
# Loads the formula with a stand-in for the parts of Homebrew's DSL it uses and fails unless:
# - it has every stanza a release needs (desc, homepage, url, sha256, license, livecheck, the
#   rust build and opensc test dependencies, install, caveats, service, test), in the order of
#   Homebrew's ComponentsOrder rule;
# - its desc keeps `brew audit`'s rules: at most 80 characters, a capital first, no article
#   first, not the formula's name first, no full stop last;
# - url is the release's https tarball, sha256 64 hexadecimal digits;
# - the caveats, as a Mac and as Linux show them, give the ssh -I and ssh-agent -P lines, and
#   the agent's (brew services; IdentityAgent for Apple's ssh on a Mac);
# - its `service do` (what `brew services` hands to launchd or systemd) runs the agent in the
#   foreground, kept alive; that command, run with the agent in BIN_DIR as systemd runs it (a
#   runtime folder of its own), listens on the agent's default socket;
# - its `install`, run with its commands and Homebrew's install folders recorded (nothing is
#   built), puts the library into lib, the agent into bin and THIRDPARTY.yml into doc (Homebrew
#   copies LICENSE into the prefix itself);
# - its `test do`, run as `brew test` runs it (in an empty temporary folder that is also HOME,
#   with Minitest's assertions), passes against the module in LIB_DIR (where `lib.install` puts
#   it) and loads it with pkcs11-tool: Debian's (package opensc) stands in for the `opensc`
#   formula's; it also runs the agent in BIN_DIR (where `bin.install` puts it).
# Prints `url=`, `sha256=` and `version=` for the caller to compare, and the commands the test
# ran. The real Homebrew (`brew style`, `brew audit`, `brew install`, `brew test`) reads the
# formula in the macOS release workflow.
require "English"
require "minitest"
require "pathname"
require "tmpdir"

HOMEBREW_PREFIX = Pathname("/opt/homebrew").freeze
HOMEBREW_CELLAR = (HOMEBREW_PREFIX/"Cellar").freeze
# The stanzas in the order Homebrew's ComponentsOrder rule wants them (of those this formula has).
ORDER = [:desc, :homepage, :url, :sha256, :license, :livecheck, :depends_on, :install, :caveats, :service,
         :test].freeze

# Homebrew's `OS.mac?` and `OS.linux?`, switchable: the caveats are checked as a Mac and as
# Linux show them.
module OS
  class << self
    attr_writer :mac

    def mac? = @mac
    def linux? = !@mac
  end
end

# Homebrew's `Version`, for the parts a test uses.
class StandInVersion < String
  def major_minor = split(".").first(2).join(".")
end

# A formula the test depends on, found where Debian installs it.
StandInDependency = Struct.new(:opt_bin)

# Homebrew's `livecheck do` block.
class Livecheck
  attr_reader :settings

  def initialize = @settings = {}
  def url(value) = @settings[:url] = value
  def strategy(value) = @settings[:strategy] = value
end

# Homebrew's `service do` block (Homebrew::Service), for the parts the formula uses; the
# formula's paths come from the formula, as Homebrew delegates them.
class StandInService
  attr_reader :settings

  def initialize(formula)
    @formula = formula
    @settings = {}
  end

  def opt_bin = @formula.opt_bin
  def run(command) = @settings[:run] = command
  def keep_alive(value) = @settings[:keep_alive] = value
end

class Formula
  include Minitest::Assertions
  attr_accessor :assertions

  class << self
    attr_reader :stanzas, :lines, :test_block, :livecheck_settings, :service_block

    def inherited(subclass)
      super
      (@formulae ||= []) << subclass
    end

    def formulae = @formulae || []

    # Where a stanza first appears.
    def at(name)
      ((@lines ||= {})[name] ||= caller_locations(2, 1).first.lineno)
    end

    [:desc, :homepage, :url, :sha256, :license].each do |name|
      define_method(name) do |value|
        at(name)
        (@stanzas ||= {})[name] = value
      end
    end

    def depends_on(spec)
      at(:depends_on)
      ((@stanzas ||= {})[:depends_on] ||= []) << spec
    end

    def livecheck(&block)
      at(:livecheck)
      @livecheck_settings = Livecheck.new.tap { |l| l.instance_eval(&block) }.settings
    end

    def service(&block)
      at(:service)
      @service_block = block
    end

    def test(&block)
      at(:test)
      @test_block = block
    end

    # `Formula["opensc"]`: Debian's opensc has pkcs11-tool in /usr/bin.
    def [](name)
      tool = Pathname("/usr/bin/pkcs11-tool")
      raise "no stand-in for the formula #{name}" unless name == "opensc"
      raise "#{tool} is missing: install Debian's opensc (scripts/install-packaging-tools.sh)" unless tool.executable?

      StandInDependency.new(tool.dirname)
    end
  end

  attr_reader :lib, :bin, :testpath, :commands

  def initialize(lib, bin, testpath = nil)
    @lib = Pathname(lib)
    @bin = Pathname(bin)
    @testpath = testpath && Pathname(testpath)
    @assertions = 0
    @commands = []
  end

  def opt_lib = lib
  def opt_bin = bin

  def version = StandInVersion.new(self.class.stanzas[:url][/-(\d+(?:\.\d+)+)\.tar\.gz\z/, 1].to_s)

  def shared_library(name)
    "#{name}.#{RUBY_PLATFORM.include?("darwin") ? "dylib" : "so"}"
  end

  # Homebrew's: the command's stdout, its exit status asserted.
  def shell_output(cmd, result = 0)
    @commands << cmd.to_s
    output = `#{cmd}`
    assert_equal result, $CHILD_STATUS.exitstatus, "#{cmd} exited with #{$CHILD_STATUS.exitstatus}"
    output
  end
end

def fail!(message)
  warn "#{ARGV[0]}: #{message}"
  exit 1
end

formula_path, lib_dir, bin_dir = ARGV
fail!("usage: ruby check_formula.rb FORMULA.rb LIB_DIR BIN_DIR") unless formula_path && lib_dir && bin_dir
load File.expand_path(formula_path)
fail!("defines #{Formula.formulae.size} formulae, not one") unless Formula.formulae.size == 1
klass = Formula.formulae.first
stanzas = klass.stanzas || {}
name = File.basename(formula_path, ".rb")

[:desc, :homepage, :url, :sha256, :license].each do |stanza|
  value = stanzas[stanza]
  fail!("no #{stanza}") unless value.is_a?(String) && !value.empty?
end
desc = stanzas[:desc]
fail!("desc is #{desc.length} characters, more than 80") if desc.length > 80
fail!("desc starts or ends with a space") if desc.strip != desc
fail!("desc does not start with a capital") unless desc.match?(/\A[[:upper:]]/)
fail!("desc starts with an article") if desc.match?(/\A(the|an?)\s/i)
fail!("desc starts with the formula's name") if desc.match?(/\A#{name.chars.join("[\\s-]?")}\b/i)
fail!("desc ends with a full stop") if desc.end_with?(".")
fail!("sha256 is not 64 hexadecimal digits") unless stanzas[:sha256].match?(/\A\h{64}\z/)
fail!("url is not an https .tar.gz") unless stanzas[:url].match?(%r{\Ahttps://.+-\d+(\.\d+)+\.tar\.gz\z})
unless klass.livecheck_settings == { url: :stable, strategy: :github_latest }
  fail!("no livecheck do (url :stable, strategy :github_latest)")
end
{ "rust" => :build, "opensc" => :test }.each do |dependency, type|
  next if (stanzas[:depends_on] || []).include?(dependency => type)

  fail!("no depends_on \"#{dependency}\" => :#{type}")
end
[:install, :caveats].each do |method|
  fail!("no def #{method}") unless klass.instance_methods(false).include?(method)

  klass.lines[method] = klass.instance_method(method).source_location[1]
end
fail!("no test do") unless klass.test_block
fail!("no service do") unless klass.service_block
lines = ORDER.map { |stanza| [stanza, klass.lines[stanza]] }
lines.each_cons(2) do |(first, first_line), (second, second_line)|
  fail!("#{second} (line #{second_line}) comes before #{first} (line #{first_line})") if second_line < first_line
end

# Homebrew's install folders (lib, bin, man1, man5, doc), recording what goes into each.
InstallFolder = Struct.new(:name, :installed) do
  def install(*files) = installed.concat(files.flatten.map { |file| [name, file.to_s] })
end

build = klass.new(lib_dir, bin_dir)
installed = []
[:lib, :bin, :man1, :man5, :doc].each do |folder|
  build.define_singleton_method(folder) { InstallFolder.new(folder, installed) }
end
build.define_singleton_method(:system) { |*args| installed << [:system, args.first.to_s] }
build.install
{
  lib: "target/release/#{build.shared_library("libcosmian_pkcs11")}",
  bin: "target/release/cosmian-ssh-agent",
  doc: "THIRDPARTY.yml",
}.each do |folder, file|
  fail!("install does not put #{file} into #{folder}: it installs #{installed}") unless installed.include?([folder, file])
end
puts "install: #{installed.reject { |folder, _| folder == :system }.map { |folder, file| "#{folder} #{file}" }.join(", ")}"

formula = klass.new(lib_dir, bin_dir)
{
  false => ["XDG_RUNTIME_DIR"],
  true  => ["/usr/bin/ssh", "IdentityAgent ~/Library/Caches/cosmian-ssh-agent/socket", "brew install openssh",
            "#{HOMEBREW_PREFIX}/bin/ssh"],
}.each do |mac, extra|
  OS.mac = mac
  caveats = formula.caveats
  (["ssh -I", "ssh-agent -P", "ssh-add -s", "brew services start", "cosmian-ssh-agent -s"] + extra).each do |needed|
    fail!("the caveats #{mac ? "on macOS" : "on Linux"} do not mention #{needed}") unless caveats.include?(needed)
  end
end

OS.mac = RUBY_PLATFORM.include?("darwin")
service = StandInService.new(formula).tap { |s| s.instance_eval(&klass.service_block) }.settings
agent = formula.opt_bin/"cosmian-ssh-agent"
unless service == { run: [agent, "-D"], keep_alive: true }
  fail!("service do is #{service}, not run [opt_bin/\"cosmian-ssh-agent\", \"-D\"] with keep_alive true")
end

Dir.mktmpdir("#{name}-test") do |testpath|
  formula = klass.new(lib_dir, bin_dir, testpath)
  home = ENV.fetch("HOME", nil)
  begin
    ENV["HOME"] = testpath
    Dir.chdir(testpath) { formula.instance_eval(&klass.test_block) }
  rescue StandardError, ScriptError, Minitest::Assertion => e
    fail!("test do failed: #{e.class}: #{e.message}")
  ensure
    ENV["HOME"] = home
  end
  module_path = formula.lib/formula.shared_library("libcosmian_pkcs11")
  unless formula.commands.any? { |cmd| cmd.match?(%r{/pkcs11-tool --module #{Regexp.escape(module_path.to_s)} }) }
    fail!("test do does not load #{module_path} with pkcs11-tool: it ran #{formula.commands}")
  end
  if formula.commands.none? { |cmd| cmd.start_with?("#{agent} ") }
    fail!("test do does not run #{agent}: it ran #{formula.commands}")
  end
  puts "url=#{stanzas[:url]}"
  puts "sha256=#{stanzas[:sha256]}"
  puts "version=#{formula.version}"
  puts "test do: passed against #{module_path} and #{agent}, running:"
  formula.commands.each { |cmd| puts "  #{cmd}" }
end

# The service's command as systemd runs it (launchd on a Mac: a HOME), killed once its socket
# is there.
Dir.mktmpdir("#{name}-service") do |home|
  runtime = File.join(home, "run")
  Dir.mkdir(runtime, 0o700)
  socket = File.join(OS.mac? ? File.join(home, "Library/Caches") : runtime, "cosmian-ssh-agent/socket")
  log = File.join(home, "agent.log")
  env = { "HOME" => home, "XDG_RUNTIME_DIR" => runtime }
  pid = Process.spawn(env, *service[:run].map(&:to_s), in: File::NULL, out: log, err: log, unsetenv_others: false)
  deadline = Time.now + 20
  sleep 0.05 until File.socket?(socket) || Time.now > deadline || Process.waitpid(pid, Process::WNOHANG)
  listening = File.socket?(socket)
  begin
    Process.kill("TERM", pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
  fail!("the service's command made no socket #{socket}: #{File.read(log)}") unless listening
  puts "service do: #{service[:run].join(" ")} (keep_alive) listens on #{socket.delete_prefix(home)} under its HOME"
end
