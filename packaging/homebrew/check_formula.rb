# Checks a Homebrew formula without Homebrew (which the Linux build machines lack), for
# `cargo xtask dist`:
#
#   ruby check_formula.rb FORMULA.rb LIB_DIR
#
# Loads the formula with just the parts of Homebrew's DSL it uses, fails unless it has every
# stanza a release needs, then runs its `test do` block against the library in LIB_DIR (the
# module `lib.install` would have put there) and evaluates its caveats. Prints `url=` and
# `sha256=` for the caller to compare.
require "pathname"

HOMEBREW_PREFIX = Pathname("/opt/homebrew").freeze
HOMEBREW_CELLAR = (HOMEBREW_PREFIX/"Cellar").freeze

# Homebrew's `OS.mac?`, switchable: the caveats are checked as a Mac and as Linux would show them.
module OS
  class << self
    attr_writer :mac

    def mac? = @mac
  end
end

class Formula
  class << self
    attr_reader :stanzas, :test_block

    def inherited(subclass)
      super
      (@formulae ||= []) << subclass
    end

    def formulae = @formulae || []

    %i[desc homepage url sha256 license].each do |name|
      define_method(name) { |value| (@stanzas ||= {})[name] = value }
    end

    def depends_on(spec)
      ((@stanzas ||= {})[:depends_on] ||= []) << spec
    end

    def test(&block)
      @test_block = block
    end
  end

  attr_reader :lib

  def initialize(lib)
    @lib = Pathname(lib)
  end

  def opt_lib = lib

  def shared_library(name)
    "#{name}.#{RUBY_PLATFORM.include?("darwin") ? "dylib" : "so"}"
  end

  def assert_equal(expected, actual)
    raise "expected #{expected.inspect}, got #{actual.inspect}" unless expected == actual
  end
end

def fail!(message)
  warn "#{ARGV[0]}: #{message}"
  exit 1
end

formula_path, lib_dir = ARGV
fail!("usage: ruby check_formula.rb FORMULA.rb LIB_DIR") unless formula_path && lib_dir
load File.expand_path(formula_path)
fail!("defines #{Formula.formulae.size} formulae, not one") unless Formula.formulae.size == 1
klass = Formula.formulae.first
stanzas = klass.stanzas || {}

%i[desc homepage url sha256 license].each do |name|
  value = stanzas[name]
  fail!("no #{name}") unless value.is_a?(String) && !value.empty?
end
fail!("sha256 is not 64 hexadecimal digits") unless stanzas[:sha256].match?(/\A\h{64}\z/)
fail!("url is not https") unless stanzas[:url].start_with?("https://")
fail!("no depends_on \"rust\" => :build") unless (stanzas[:depends_on] || []).include?("rust" => :build)
%i[install caveats].each do |method|
  fail!("no def #{method}") unless klass.instance_methods(false).include?(method)
end
fail!("no test do") unless klass.test_block

formula = klass.new(lib_dir)
{ false => [], true => ["/usr/bin/ssh", "brew install openssh", "#{HOMEBREW_PREFIX}/bin/ssh"] }.each do |mac, extra|
  OS.mac = mac
  caveats = formula.caveats
  (["ssh -I", "ssh-agent -P", "ssh-add -s"] + extra).each do |needed|
    fail!("the caveats #{mac ? "on macOS" : "on Linux"} do not mention #{needed}") unless caveats.include?(needed)
  end
end
begin
  formula.instance_eval(&klass.test_block)
rescue StandardError, ScriptError => e
  fail!("test do failed: #{e.class}: #{e.message}")
end

puts "url=#{stanzas[:url]}"
puts "sha256=#{stanzas[:sha256]}"
puts "test do: passed against #{formula.lib/formula.shared_library("libcosmian_pkcs11")}"
